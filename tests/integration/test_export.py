"""`lhp export`: safetensors round trip and loaders, ONNX parity for every token architecture,
int8, the benchmark's quick mode, and bad input (one clear error, nothing left behind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lhp.errors import UserError
from lit_models.checkpoints import load_checkpoint, load_module, load_net, platform_meta
from lit_models.exporting.exporter import MAX_REL_LOGIT_DIFF, export
from lit_models.exporting.onnx_models import (
    ExportError,
    LogitsOnly,
    OrtNet,
    export_onnx,
    exportable,
    parity,
)
from tests.conftest import compose_config


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_safetensors_round_trip_is_bit_identical_and_loads_like_the_checkpoint(
        tiny_teacher: Path, tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "st"
    config = export(tiny_teacher, out, "safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                     "tokenizer.json"]
    assert config["architecture"] == "gpt" and config["export_format"] == "safetensors"
    net, meta = load_net(tiny_teacher)
    back, back_meta = load_net(out)  # the path generate and serve take
    want, got = net.state_dict(), back.state_dict()
    assert list(want) == list(got)
    for key in want:
        assert want[key].dtype == got[key].dtype and torch.equal(want[key], got[key]), key
    assert back.lm_head.weight is back.wte.weight  # tied weights stored once, tied again
    assert back_meta["tokenizer"] == meta["tokenizer"]
    ids = torch.randint(0, net.config.vocab_size, (2, 16))
    assert torch.equal(net(ids)[0], back(ids)[0])

    # evaluate on the directory gives the checkpoint's numbers
    from experiments.evaluate import evaluate

    results = []
    for i, path in enumerate((tiny_teacher, out)):
        cfg = compose_config("eval", [f"ckpt_path={path}", "logger=csv", "trainer.limit_val_batches=2",
                                      "trainer.limit_test_batches=1"], tmp_path / f"eval{i}", data_dir)
        results.append(evaluate(cfg)[0])
    assert results[0] == results[1] and "val/wiki_loss" in results[0]

    # the file is data: its config goes through the checkpoint allow-lists, digests are checked
    config_path = out / "config.json"
    good = config_path.read_text()
    for change, message in ((lambda c: c.update(architecture="os.system"), "not one of"),
                            (lambda c: c["arch_config"].update(n_layer=-1), "invalid arch_config"),
                            (lambda c: c.update(recipe="builtins.eval"), "refusing to build it")):
        bad = json.loads(good)
        change(bad)
        config_path.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=message):
            load_net(out)
    config_path.write_text(good)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_checkpoint(out)


def test_onnx_and_int8_exports_of_a_checkpoint(tiny_teacher: Path, tmp_path: Path,
                                               data_dir: Path) -> None:
    from experiments.export import run_export

    cfg = compose_config("export", [f"ckpt_path={tiny_teacher}", "format=onnx",
                                    f"out={tmp_path / 'onnx'}", "parity_tokens=64"],
                         tmp_path / "run", data_dir)
    config = run_export(cfg)
    assert config["onnx"]["exporter"] == {"model.onnx": "dynamo", "model_with_past.onnx": "dynamo"}
    for name, checks in config["onnx"]["parity"].items():
        fp32 = checks["fp32"]
        assert fp32["rel_logit_diff"] <= MAX_REL_LOGIT_DIFF, name
        assert fp32["greedy_identical"] and fp32["greedy_tokens_equal"] == 64, name
    int8 = export(tiny_teacher, tmp_path / "int8", "onnx-int8", parity_tokens=8)
    assert set(int8["onnx"]["parity"]["model.onnx"]) == {"fp32", "int8"}
    for name in ("model.onnx", "model_with_past.onnx"):
        assert (tmp_path / "int8" / name).stat().st_size < 0.5 * (tmp_path / "onnx" / name).stat().st_size
    with pytest.raises(UserError, match="is an 'onnx' export"):
        load_net(tmp_path / "onnx")  # evaluate/generate/serve read safetensors exports only


TINY = {"vocab_size": 97, "block_size": 40, "n_layer": 2, "n_head": 4, "n_embd": 32}


@pytest.mark.parametrize("arch, extra", [
    ("gpt", {"linear": "phm", "phm_n": 4, "pos_embedding": "rope", "qk_norm": True}),
    ("indra", {"d_model": 24}),
    ("qtg", {"topo_k": 3}),
], ids=["gpt-phm-rope", "indra", "qtg"])
def test_onnx_parity_every_architecture(arch: str, extra: dict, tmp_path: Path) -> None:
    """Random tiny nets (the checkpoint test covers the dense GPT): logits within 1e-4 of the
    logit scale and the same 64 greedy tokens (40-token context: the window slides)."""
    from lit_models.archs.registry import build_arch

    torch.manual_seed(0)
    net = build_arch(arch, {**TINY, **extra}).eval()
    ids = torch.randint(0, 97, (2, 8))
    path = tmp_path / "model.onnx"
    assert export_onnx(LogitsOnly(exportable(net)), (ids,), path, ["input_ids"], ["logits"],
                       {"input_ids": (0, 1)}, arch) == "dynamo"
    result = parity(net, OrtNet(path, net.config), 64)
    assert result["rel_logit_diff"] <= MAX_REL_LOGIT_DIFF, result
    assert result["greedy_identical"], result


def test_an_architecture_that_cannot_export_is_one_clear_error(tmp_path: Path) -> None:
    class Spectral(torch.nn.Module):  # complex eigenvalues: neither exporter has the op
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(input_ids.float()).abs()

    with pytest.raises(ExportError, match="'spectral' cannot be exported to ONNX: dynamo"):
        export_onnx(Spectral(), (torch.ones(2, 8, 8, dtype=torch.long),), tmp_path / "m.onnx",
                    ["input_ids"], ["y"], {"input_ids": (0,)}, "architecture 'spectral'")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_input_is_one_error_and_leaves_nothing(tiny_teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export(tiny_teacher, tmp_path / "x", "tflite")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty; pass overwrite=true"):
        export(tiny_teacher, busy, "safetensors")
    with pytest.raises(UserError, match="not a previous export"):
        export(tiny_teacher, busy, "safetensors", overwrite=True)
    assert _leftovers(busy) == ["notes.txt"]
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, plain)
    with pytest.raises(UserError, match="no platform metadata"):
        export(plain, tmp_path / "y", "onnx")
    # a failure half-way (after the weights are written): no partial export left behind
    ckpt = torch.load(tiny_teacher, map_location="cpu", weights_only=True)
    ckpt["platform"]["tokenizer"] = None
    untokenized = tmp_path / "work" / "untokenized.ckpt"
    untokenized.parent.mkdir()
    torch.save(ckpt, untokenized)
    with pytest.raises(UserError, match="stores no tokenizer"):
        export(untokenized, tmp_path / "work" / "out", "safetensors")
    assert _leftovers(tmp_path / "work") == ["untokenized.ckpt"]
    # overwrite=true replaces a previous export
    export(tiny_teacher, tmp_path / "again", "safetensors")
    export(tiny_teacher, tmp_path / "again", "safetensors", overwrite=True)
    meta = platform_meta(load_checkpoint(tmp_path / "again"), tmp_path / "again")
    assert load_module(load_checkpoint(tmp_path / "again"), meta).net.config.n_layer == 2


def test_export_bench_quick(tiny_teacher: Path, tmp_path: Path) -> None:
    from experiments.bench.export import main

    rows = main(["--quick", "--ckpt", str(tiny_teacher), "--out", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["headline"].startswith("export: int8 model.onnx")
    variants = {(r["variant"], r["threads"]) for r in rows}
    assert variants == {(v, n) for v in ("pytorch fp32", "onnx fp32", "onnx int8") for n in (1, 2)}
    ppl = {r["variant"]: r["word_ppl"] for r in rows}
    assert ppl["onnx fp32"] == pytest.approx(ppl["pytorch fp32"], rel=1e-4)
    assert all(r["ms_per_token"] > 0 for r in rows)
