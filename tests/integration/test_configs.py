"""Every config file instantiates; every experiment (on its tiny twin) runs one fast_dev_run."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from experiments.train import train
from experiments.utils import instantiate_group
from tests.conftest import CONF


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("model"))
def test_model_config_instantiates_on_meta(make_cfg, name: str) -> None:
    cfg = make_cfg([f"model={name}", "model.arch_config.vocab_size=258"])
    with torch.device("meta"):
        module = instantiate(cfg.model, _convert_="all")
    assert module.num_params() > 0


FIXTURES = CONF.parent / "tests" / "fixtures"
# Per data config: overrides that point it at small local fixture files (no hub, no network).
DATA_OVERRIDES = {
    "mock_jsonl": ["data.mock_num_records=200"],
    "wikitext_alpaca": [f"data.wiki.path={FIXTURES / 'wikitext_tiny'}", "data.wiki.hub_id=null",
                        f"data.alpaca.paths=[{FIXTURES / 'alpaca_tiny.json'}]",
                        "data.alpaca.hub_id=null", "data.tokenizer.vocab_size=300"],
    "text_file": [f"data.path={FIXTURES / 'wikitext_tiny' / 'train.txt'}"],
}


# Coordinate data (position -> character) has no token blocks: tests/unit/test_fractal_data.py.
COORDINATE_DATA = {"book_coords"}


@pytest.mark.parametrize("name", [n for n in options("data") if n not in COORDINATE_DATA])
def test_data_config_instantiates_and_sets_up(make_cfg, name: str) -> None:
    assert name in DATA_OVERRIDES, f"add fixture overrides for data={name} to DATA_OVERRIDES"
    cfg = make_cfg([f"data={name}", "data.block_size=32", *DATA_OVERRIDES[name]])
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].shape == (cfg.data.batch_size, 32)


@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_config_instantiates(make_cfg, name: str) -> None:
    cfg = make_cfg([f"callbacks={name}"])
    callbacks = instantiate_group(cfg.callbacks, "callback")
    assert len(callbacks) == len([k for k in (cfg.callbacks or {}) if "_target_" in cfg.callbacks[k]])


@pytest.mark.parametrize("name", options("logger"))
def test_logger_config_instantiates(make_cfg, name: str) -> None:
    cfg = make_cfg([f"logger={name}"])
    loggers = instantiate_group(cfg.logger, "logger")
    assert loggers, f"logger={name} built nothing"


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_config_instantiates(make_cfg, name: str) -> None:
    cfg = make_cfg([f"trainer={name}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip(f"trainer/{name} needs a CUDA GPU; none on this machine")
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def experiments_to_run() -> list[str]:
    """Each experiment's tiny twin (``<name>_tiny``) where it has one, else the experiment."""
    names = options("experiment")
    return [n for n in names if f"{n}_tiny" not in names]


# Experiments that need a file made by another run: name -> fixture giving their overrides.
NEEDS = {"indra_kd_tiny": lambda request: [
    f"model.teacher.path={request.getfixturevalue('tiny_teacher')}"]}


@pytest.mark.parametrize("name", experiments_to_run())
def test_experiment_fast_dev_run(make_cfg, name: str, request: pytest.FixtureRequest) -> None:
    extra = NEEDS[name](request) if name in NEEDS else []
    cfg = make_cfg([f"experiment={name}", "trainer.fast_dev_run=true", *extra])
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert "val/loss" in metrics and "test/loss" in metrics


@pytest.mark.parametrize("override", ["trainer.max_stepz=3", "model.arch_config.n_layerz=2",
                                      "data.batch_sise=4"])
def test_typo_in_override_fails_with_hydra_message(make_cfg, override: str) -> None:
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].split(".")[-1]):
        make_cfg([override])


@pytest.mark.parametrize("name", options("debug"))
def test_debug_preset_runs(make_cfg, name: str) -> None:
    cfg = make_cfg(["experiment=smoke_tiny", f"debug={name}", "trainer.max_steps=6"])
    _, objects = train(cfg)
    assert 1 <= objects["trainer"].global_step <= 6
