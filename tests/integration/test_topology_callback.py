"""TopologyMetrics on a tiny training run: topo/ metrics in the CSV log (finite), the integration
metrics when asked, the diagram image in the offline W&B run, clear errors for bad arguments,
training left unchanged."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from callbacks.topology_metrics import TopologyMetrics, diagram_image
from experiments.train import train
from lhp.errors import UserError
from lit_models.language_model import LanguageModel
from lit_models.topology import compute_persistence

RUN = ["experiment=smoke_tiny", "callbacks=with_topology", "trainer.max_steps=10",
       "trainer.val_check_interval=10", "trainer.limit_val_batches=2", "test=false",
       "callbacks.topology_metrics.every_n_steps=4", "callbacks.topology_metrics.max_points=64",
       "callbacks.topology_metrics.integration=[twonn,mle,lz,te,recon]"]
STATS = ("betti0", "betti1", "entropy", "total_persistence", "scale", "entropy_h1",
         "total_persistence_h1", "id_twonn", "id_mle", "lz", "recon_h0", "recon_h1")


def test_tiny_run_logs_finite_topology_metrics_and_an_image(make_cfg) -> None:
    cfg = make_cfg(RUN)
    _, objects = train(cfg)
    cb = next(c for c in objects["callbacks"] if isinstance(c, TopologyMetrics))
    assert cb.layer_names == ["net.blocks.0", "net.blocks.1"]  # default: middle and last block
    out = Path(cfg.paths.output_dir)
    with open(next(out.glob("csv/version_*/metrics.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    topo = [r for r in rows if r.get("topo/net.blocks.1/betti0")]
    # steps 4 and 8 (every_n_steps) and 10 (validation end)
    assert sorted(int(r["step"]) for r in topo) == [4, 8, 10]
    for layer in cb.layer_names:
        for stat in STATS:
            values = [float(r[f"topo/{layer}/{stat}"]) for r in topo]
            assert all(math.isfinite(v) for v in values), (layer, stat, values)
        assert all(float(r[f"topo/{layer}/betti0"]) >= 1 for r in topo)
        assert any(float(r[f"topo/{layer}/total_persistence"]) > 0 for r in topo)
        width = cb.hidden_states(objects["model"])[layer].shape[1]
        assert all(0 < float(r[f"topo/{layer}/id_twonn"]) < width for r in topo)
        assert all(0 < float(r[f"topo/{layer}/lz"]) < 2 for r in topo)
    # transfer entropy from / to the previous layer: on the second layer only
    assert all(math.isfinite(float(r["topo/net.blocks.1/te_from_prev"])) for r in topo)
    assert "topo/net.blocks.0/te_from_prev" not in rows[0]
    assert cb.integration_seconds > 0
    images = list(out.glob("wandb/offline-run-*/files/media/images/topo/*.png"))
    assert len(images) == 3, images
    assert cb.computations == 3 and cb.probe["index"].numel() == 64


@pytest.mark.slow
def test_callback_does_not_change_training(make_cfg) -> None:
    """Same weights with and without the callback (dropout on: RNG use would show)."""
    common = ["experiment=smoke_tiny", "trainer.max_steps=6", "test=false", "logger=csv",
              "trainer.limit_val_batches=0", "model.arch_config.dropout=0.1"]
    weights = []
    for i, extra in enumerate([[], ["callbacks=with_topology",
                                    "callbacks.topology_metrics.every_n_steps=2"]]):
        _, objects = train(make_cfg(common + extra, out=f"run{i}"))
        weights.append({k: v.clone() for k, v in objects["model"].state_dict().items()})
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny_module() -> LanguageModel:
    return LanguageModel("gpt", {"vocab_size": 50, "block_size": 16, "n_layer": 3,
                                 "n_head": 2, "n_embd": 16})


def test_unknown_layer_lists_the_blocks(tiny_module) -> None:
    cb = TopologyMetrics(layers=["net.blocks.7"])
    with pytest.raises(ValueError, match=r"net\.blocks\.7.*net\.blocks\.0.*net\.blocks\.2"):
        cb.setup(None, tiny_module, "fit")
    cb = TopologyMetrics(layers=[-1, "net.blocks.*.mlp"])
    cb.setup(None, tiny_module, "fit")
    assert cb.layer_names == ["net.blocks.2", "net.blocks.0.mlp", "net.blocks.1.mlp",
                              "net.blocks.2.mlp"]


@pytest.mark.parametrize("kwargs, match", [
    ({"every_n_steps": 0}, "every_n_steps"), ({"max_points": 2}, "max_points"),
    ({"max_dim": 2}, "max_dim"), ({"method": "cech"}, "method"), ({"scale": -1.0}, "scale"),
    ({"probe_source": "test"}, "probe_source"), ({"layers": []}, "layers"),
    ({"layers": "net.blocks.0"}, "layers"), ({"probe_batch_size": 0}, "probe_batch_size"),
    ({"integration": ["twonn", "fractal"]}, "integration"), ({"integration": "lz"}, "integration"),
    ({"n_symbols": 1}, "n_symbols"), ({"n_symbols": 257}, "n_symbols"),
    ({"recon_dim": 0}, "recon_dim"), ({"te_surrogates": -1}, "te_surrogates"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TopologyMetrics(**kwargs)


def test_integration_needs_enough_probe_tokens_and_two_layers(tiny_module) -> None:
    cb = TopologyMetrics(integration=["mle"])
    with pytest.raises(UserError, match=r"3 real tokens.*needs >= 21.*probe_batch_size"):
        cb._set_probe({"input_ids": torch.ones(1, 3, dtype=torch.long)})
    with pytest.raises(UserError, match="'te' needs at least 2 layers"):
        TopologyMetrics(integration=["te"], layers=[-1]).setup(None, tiny_module, "fit")


def test_probe_uses_only_real_tokens_and_statistics_on_known_cloud(tiny_module) -> None:
    cb = TopologyMetrics(max_points=5)
    mask = torch.zeros(2, 4, dtype=torch.long)
    mask[0, :3] = 1  # 3 real tokens only
    cb._set_probe({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask})
    assert cb.probe["index"].tolist() == [0, 1, 2]
    # a unit square: H0 deaths 1, 1, 1 (+inf); one loop born at 1, dying at sqrt(2)
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    stats = TopologyMetrics(scale=1.2).statistics(compute_persistence(square, max_dim=1))
    assert stats["betti0"] == 1 and stats["betti1"] == 1
    assert stats["total_persistence"] == pytest.approx(3.0)
    assert stats["total_persistence_h1"] == pytest.approx(math.sqrt(2) - 1)
    assert stats["entropy"] == pytest.approx(math.log(3))
    image = diagram_image({"a": compute_persistence(square, max_dim=1)}, title="t")
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"
