"""H2Q end to end: SQLite CheckpointIO resume == default resume, the h2q CLI on a trained
checkpoint, weights from another model, and (slow) both benchmarks on tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import h2q
from experiments.train import train
from lit_models.checkpoints import load_checkpoint
from lit_models.compression.store import WeightStore, WeightStoreError, is_weight_store
from tests.conftest import compose_config

K = 4  # resume after K steps, stop at 2K
COMMON = ["experiment=smoke_tiny", "model.arch_config.dropout=0.1", "test=false", "logger=csv",
          "trainer.val_check_interval=3", "callbacks.model_checkpoint.every_n_train_steps=2",
          "trainer.max_steps=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """K steps then a resume to 2K, once with torch.save checkpoints and once with SQLite ones."""
    root = tmp_path_factory.mktemp("h2q")
    out: dict[str, dict] = {}
    for io, extra in (("default", []), ("sqlite", ["+plugins=sqlite_checkpoint"])):
        def run(name: str, more: list[str], io: str = io, extra: list[str] = extra) -> dict:
            cfg = compose_config("train", COMMON + extra + more, root / io / name, root / "data")
            return train(cfg)[1]

        first = run("first", [f"callbacks.token_budget.max_tokens={K * 8 * 32}"])
        ckpt = root / io / "first" / "checkpoints" / "last.ckpt"
        resumed = run("resumed", [f"ckpt_path={ckpt}"])
        out[io] = {"first": first, "resumed": resumed, "ckpt": ckpt, "root": root}
    return out


def test_sqlite_checkpoint_resume_equals_default_resume(runs: dict) -> None:
    default, sqlite = runs["default"], runs["sqlite"]
    assert is_weight_store(sqlite["ckpt"]) and not is_weight_store(default["ckpt"])
    for r in (default, sqlite):
        assert r["first"]["trainer"].global_step == K and r["resumed"]["trainer"].global_step == 2 * K
    a, b = load_checkpoint(default["ckpt"]), load_checkpoint(sqlite["ckpt"])
    assert a["loops"] == b["loops"] and a["global_step"] == b["global_step"] == K
    for key, t in a["state_dict"].items():
        assert torch.equal(t, b["state_dict"][key]), key
    for pid, state in a["optimizer_states"][0]["state"].items():
        for name, t in state.items():
            assert torch.equal(t, b["optimizer_states"][0]["state"][pid][name]), (pid, name)
    wa = default["resumed"]["model"].state_dict()
    wb = sqlite["resumed"]["model"].state_dict()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between default and SQLite resume"
    assert default["resumed"]["model"].tokens_seen == sqlite["resumed"]["model"].tokens_seen


def test_h2q_cli_on_a_trained_checkpoint(runs: dict, tmp_path: Path, capsys) -> None:
    ckpt = runs["sqlite"]["ckpt"]  # an SQLite CheckpointIO file is a checkpoint like any other
    db = tmp_path / "gpt.db"
    summary = h2q.main(["structure", str(ckpt), str(db), "--dir-bits", "6", "--norm-bits", "2"])
    coded = [k for k, v in summary["layers"].items() if v["codec"] == "quaternion"]
    assert "net.blocks.0.mlp.fc.weight" in coded and "net.wte.weight" in coded
    assert summary["aliases"] == {"net.lm_head.weight": "net.wte.weight"}
    assert summary["stored_bytes"] < summary["logical_bytes"] / 3
    stats = h2q.main(["stats", str(db)])
    assert stats["codecs"]["quaternion"] == len(coded) and stats["aliases"] == 1
    layer = h2q.main(["load-layer", str(db), "net.blocks.0.mlp.fc.weight", "--out",
                      str(tmp_path / "fc.safetensors")])
    original = load_checkpoint(ckpt)["state_dict"]["net.blocks.0.mlp.fc.weight"]
    assert layer.shape == original.shape
    assert float((layer - original).norm() / original.norm()) == pytest.approx(
        summary["layers"]["net.blocks.0.mlp.fc.weight"]["rel_error"], rel=1e-5)
    reports = h2q.main(["validate", str(ckpt), "--dir-bits", "6", "--norm-bits", "2"])
    assert all(r["polar_exact"] for r in reports)
    capsys.readouterr()
    h2q.main(["analyse", str(db), "--layer", "net.blocks.1.attn.qkv.weight", "--json"])
    fp = json.loads(capsys.readouterr().out)["net.blocks.1.attn.qkv.weight"]
    assert fp["spectrum"]["n_singular_values"] == 64 and 0 <= fp["quaternion"]["orthant_entropy"] <= 1
    assert h2q.main(["verify", str(db)]) > 0
    out = h2q.main(["export", str(db), str(tmp_path / "gpt.safetensors")])
    from safetensors.torch import load_file

    assert torch.equal(load_file(out)["net.blocks.0.mlp.fc.weight"], layer)
    with pytest.raises(SystemExit) as err:
        h2q.main(["load-layer", str(db), "net.blocks.9.mlp.fc.weight"])
    assert err.value.code == 2
    assert "no layer 'net.blocks.9.mlp.fc.weight'" in capsys.readouterr().err


def test_weights_from_another_model_are_refused_naming_the_file(runs: dict, tmp_path: Path) -> None:
    from lit_models.archs import build_arch

    db = tmp_path / "raw.db"
    with WeightStore(db, "a") as store:
        store.put_state_dict({k.removeprefix("net."): v for k, v in
                              load_checkpoint(runs["default"]["ckpt"])["state_dict"].items()})
    model = runs["default"]["resumed"]["model"].net
    with WeightStore(db) as store:
        store.load_into(model)  # the right model: fits
        other = build_arch("gpt", {**model.config.__dict__, "n_embd": 32, "n_head": 4})
        with pytest.raises(WeightStoreError, match=r"raw.db: weights do not fit GPT.*shape mismatch"):
            store.load_into(other)
        phm = build_arch("gpt", {**model.config.__dict__, "linear": "phm"})
        with pytest.raises(WeightStoreError, match=r"raw.db.*missing \['blocks.0.attn.proj.kernels'"):
            store.load_into(phm)


@pytest.mark.slow
def test_pareto_bench_on_tiny_checkpoints(tmp_path: Path, capsys) -> None:
    from experiments.bench import h2q_pareto

    data = tmp_path / "data"
    ckpts = {}
    for name in ("gpt_wikitext2_tiny", "gpt_wikitext2_phm_tiny"):
        cfg = compose_config("train", [f"experiment={name}", "trainer.max_steps=6", "test=false",
                                       "logger=csv"], tmp_path / name, data)
        train(cfg)
        ckpts[name] = tmp_path / name / "checkpoints" / "last.ckpt"
    args = ["--ckpt", str(ckpts["gpt_wikitext2_tiny"]), "--methods", "fp32,fp16,int8,svd4,quat6+2",
            "--limit-val-batches", "2", "--out", str(tmp_path / "rows.json")]
    rows = h2q_pareto.main(args)
    by = {(r["model"], r["method"]): r for r in rows}
    assert by[("gpt", "fp16")]["bytes"] < by[("gpt", "fp32")]["bytes"] / 1.8
    assert by[("gpt", "quat6+2")]["bytes"] < by[("gpt", "int8")]["bytes"]
    assert by[("gpt", "fp16")]["word_ppl"] == pytest.approx(by[("gpt", "fp32")]["word_ppl"], rel=1e-2)
    assert by[("phm4", "fp32")]["word_ppl"] is None and "not run" in by[("phm4", "fp32")]["note"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("h2q_pareto (word ppl): fp32")
    rows = h2q_pareto.main(args + ["--phm-ckpt", str(ckpts["gpt_wikitext2_phm_tiny"]),
                                   "--methods", "fp32"])
    phm = {r["method"]: r for r in rows if r["model"] == "phm4"}
    assert phm["fp32"]["bytes"] < by[("gpt", "fp32")]["bytes"] and phm["fp16"]["word_ppl"] > 1
    assert phm["int4"]["bytes"] < phm["int8"]["bytes"] < phm["fp16"]["bytes"]  # --phm-methods default


@pytest.mark.slow
def test_weight_store_bench_on_a_tiny_checkpoint(runs: dict) -> None:
    from experiments.bench import weight_store

    figure = weight_store.main(["--ckpt", str(runs["default"]["ckpt"]), "--repeats", "1"])
    assert figure["medians"]["store_layer"]["mb"] < figure["medians"]["store_full"]["mb"]
    assert figure["full_latency_ratio"] > 0 and figure["full_peak_ratio"] > 0
