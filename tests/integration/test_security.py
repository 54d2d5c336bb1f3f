"""Files are data, never code: a crafted checkpoint, data config or override never runs anything.

Each entry point that builds objects from a file (generate, evaluate, the TCS embedder, the KD
teacher, resume) is fed a checkpoint whose stored ``_target_`` says ``subprocess.Popen`` with
``args: [touch, <marker>]``; the marker must never appear and the error must name the file.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.evaluate import evaluate
from experiments.generate import generate_text
from experiments.train import train
from lhp.errors import UserError
from lit_models.checkpoints import load_net, select_resume_checkpoint
from lit_models.distillation import load_teacher
from lit_models.embedder import StatefulEmbedder
from tests.conftest import REPO, compose_config

TINY = ["experiment=smoke_tiny", "logger=csv", "test=false", "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("security")
    train(compose_config("train", TINY, root / "run", data_dir=root / "data"))
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    return {"root": root, "ckpt": ckpt, "dict": torch.load(ckpt, weights_only=True)}


def _write(ckpt: dict, path: Path) -> Path:
    torch.save(ckpt, path)
    return path


def hostile_recipe(good: dict, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned-recipe"
    ckpt = copy.deepcopy(good["dict"])
    ckpt["platform"]["config"]["model"]["_target_"] = "subprocess.Popen"
    ckpt["hyper_parameters"] = {"args": ["touch", str(marker)]}
    return _write(ckpt, tmp_path / "hostile_recipe.ckpt"), marker


def hostile_data(good: dict, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned-data"
    ckpt = copy.deepcopy(good["dict"])
    ckpt["platform"]["config"]["data"] = {"_target_": "subprocess.Popen", "args": ["touch", str(marker)]}
    return _write(ckpt, tmp_path / "hostile_data.ckpt"), marker


def _refused(fn, path: Path, marker: Path) -> None:
    with pytest.raises(UserError, match=path.name):
        fn()
    assert not marker.exists(), "a command from the checkpoint ran"


def test_generate_refuses_a_stored_target(good: dict, tmp_path: Path) -> None:
    path, marker = hostile_recipe(good, tmp_path)
    cfg = compose_config("generate", [f"ckpt_path={path}", "max_new_tokens=2"], tmp_path / "gen")
    _refused(lambda: generate_text(cfg), path, marker)


def test_evaluate_refuses_stored_recipe_and_data_targets(good: dict, tmp_path: Path) -> None:
    for make in (hostile_recipe, hostile_data):
        path, marker = make(good, tmp_path)
        cfg = compose_config("eval", [f"ckpt_path={path}", "logger=csv"], tmp_path / path.stem,
                             data_dir=good["root"] / "data")
        _refused(lambda cfg=cfg: evaluate(cfg), path, marker)


def test_embedder_teacher_and_load_net_refuse_a_stored_target(good: dict, tmp_path: Path) -> None:
    path, marker = hostile_recipe(good, tmp_path)
    _refused(lambda: StatefulEmbedder.from_checkpoint(path), path, marker)
    _refused(lambda: load_net(path), path, marker)
    spec = {"kind": "platform", "path": str(path), "dtype": "float32", "verify_tokenizer": False}
    _refused(lambda: load_teacher(spec, 258, None, 32), path, marker)


def test_hyper_parameters_are_checked_against_the_recipe(good: dict, tmp_path: Path) -> None:
    ckpt = copy.deepcopy(good["dict"])
    ckpt["hyper_parameters"]["surprise"] = 1
    path = _write(ckpt, tmp_path / "extra_hp.ckpt")
    with pytest.raises(UserError, match="surprise"):
        load_net(path)
    ckpt = copy.deepcopy(good["dict"])
    ckpt["hyper_parameters"]["arch"] = "nope"
    path = _write(ckpt, tmp_path / "bad_arch.ckpt")
    with pytest.raises(UserError, match="nope"):
        load_net(path)


@pytest.mark.parametrize("override", [
    "+callbacks.evil._target_=subprocess.Popen",
    "+callbacks.evil._target_=lit_models.checkpoints.Path",  # a re-export, not a platform class
    "model._target_=builtins.eval",
    "+model.optimizer.extra._target_=os.system",  # nested targets are checked too
])
def test_train_refuses_non_platform_targets(make_cfg, override: str) -> None:
    with pytest.raises(UserError, match="_target_"):
        train(make_cfg(TINY + [override]))


@pytest.mark.parametrize(("override", "key"), [
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("data.batch_size=-1", "data.batch_size"),
    ("model.optimizer.lr=-0.1", "model.optimizer.lr"),
    ("data.block_size=1.5", "data.block_size"),
    ("trainer.devices=zero", "trainer.devices"),
])
def test_bad_values_are_refused_before_any_work_naming_the_key(make_cfg, tmp_path: Path,
                                                                override: str, key: str) -> None:
    cfg = make_cfg(TINY + [override])
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("checkpoints/*"))


def test_token_recipe_on_coordinate_data_is_refused(make_cfg) -> None:
    with pytest.raises(UserError, match="coordinates"):
        train(make_cfg(TINY + ["data=book_coords"]))


def test_resuming_another_models_checkpoint_names_the_mismatch(good: dict, make_cfg) -> None:
    cfg = make_cfg(TINY + [f"ckpt_path={good['ckpt']}", "model.arch_config.n_layer=3"])
    with pytest.raises(UserError, match="different experiment"):
        train(cfg)


def test_evaluate_refuses_coordinate_data_for_a_token_model(good: dict, tmp_path: Path) -> None:
    cfg = compose_config("eval", [f"ckpt_path={good['ckpt']}", "data=book_coords"], tmp_path / "e")
    with pytest.raises(UserError, match="coordinates"):
        evaluate(cfg)


def test_resume_falls_back_past_a_corrupt_last_checkpoint(good: dict, tmp_path: Path) -> None:
    ckpts = tmp_path / "run" / "2026-01-01_00-00-00" / "checkpoints"
    ckpts.mkdir(parents=True)
    older = ckpts / "step000004-val_loss1.0000.ckpt"
    older.write_bytes(good["ckpt"].read_bytes())
    last = ckpts / "last.ckpt"
    last.write_bytes(good["ckpt"].read_bytes()[:1000])  # truncated
    found, ckpt, _ = select_resume_checkpoint(tmp_path / "run")
    assert found == older and ckpt["global_step"] == good["dict"]["global_step"]


def test_cli_user_error_is_one_line_with_exit_code_2(good: dict, tmp_path: Path) -> None:
    path, marker = hostile_recipe(good, tmp_path)
    for args in (["experiments.generate", f"ckpt_path={path}"],
                 ["experiments.train", "experiment=smoke_tiny", "trainer.max_steps=abc"],
                 ["experiments.train", "experiment=no_such_experiment"]):
        proc = subprocess.run([sys.executable, "-m", *args, f"hydra.run.dir={tmp_path / 'cli'}"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr + proc.stdout
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stderr[-2000:]
    assert not marker.exists()


OLD = REPO / "tests" / "data" / "old_checkpoints"


def test_generate_on_a_coordinate_checkpoint_says_so(tmp_path: Path) -> None:
    cfg = compose_config("generate", [f"ckpt_path={OLD / 'fractal.pt'}"], tmp_path / "gen")
    with pytest.raises(UserError, match="generate needs a tokens model.*CoordinateDecoder"):
        generate_text(cfg)


def test_load_errors_never_advise_disabling_weights_only(tmp_path: Path) -> None:
    from lit_models.checkpoints import load_checkpoint

    path = tmp_path / "evil.ckpt"
    path.write_bytes(__import__("pickle").dumps(subprocess.Popen))  # a global torch refuses
    with pytest.raises(UserError, match="evil.ckpt") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)


def test_h2q_analyse_on_a_corrupt_safetensors_file_names_it(tmp_path: Path, capsys) -> None:
    from experiments import h2q

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SystemExit) as err:
        h2q.main(["analyse", str(path)])
    assert err.value.code == 2
    assert "w.safetensors" in capsys.readouterr().err


def test_atlas_list_fails_on_an_inconsistent_library(tmp_path: Path, capsys) -> None:
    from experiments import atlas
    from lit_models.archs.fractal import FractalConfig, FractalDecoder
    from lit_models.atlas import AtlasLibrary

    net = FractalDecoder(FractalConfig(vocab_size=5, num_books=1, n_embd=8, block_hidden=8,
                                       depth=1, n_frequencies=2, key_dim=2))
    lib = AtlasLibrary.create(tmp_path / "lib", net, list("abcd"))
    lib.core_path.write_bytes(lib.core_path.read_bytes()[:100])  # damaged core
    with pytest.raises(SystemExit) as err:
        atlas.main(["list", "--library", str(tmp_path / "lib")])
    assert err.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_time_cap_that_ends_training_early_is_reported(make_cfg, caplog) -> None:
    cfg = make_cfg(TINY + ["trainer.max_steps=2000", "trainer.max_time=00:00:00:03"])
    with caplog.at_level("WARNING"):
        train(cfg)
    assert "training stopped at step" in caplog.text and "max_steps=2000" in caplog.text


def test_make_train_default_has_no_time_cap(make_cfg) -> None:
    assert make_cfg(["experiment=smoke"]).trainer.max_time is None
