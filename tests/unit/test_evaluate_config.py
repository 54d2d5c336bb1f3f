"""experiments.evaluate: which data config a checkpoint is evaluated on."""

from __future__ import annotations

from omegaconf import OmegaConf

from experiments.evaluate import resolve_data_config

STORED = {"_target_": "datamodules.x.DM", "batch_size": 8, "alpaca": {"response_only_loss": False, "val_fraction": 0.1}}


def test_nothing_given_uses_the_stored_config() -> None:
    assert OmegaConf.to_container(resolve_data_config(None, STORED)) == STORED


def test_partial_override_changes_only_its_keys() -> None:
    cfg = resolve_data_config(OmegaConf.create({"alpaca": {"response_only_loss": True}}), STORED)
    assert cfg.alpaca.response_only_loss is True
    assert cfg.alpaca.val_fraction == 0.1 and cfg.batch_size == 8
    assert cfg._target_ == STORED["_target_"]


def test_a_whole_data_config_replaces_the_stored_one() -> None:
    other = OmegaConf.create({"_target_": "datamodules.y.Other", "batch_size": 2})
    assert OmegaConf.to_container(resolve_data_config(other, STORED)) == {
        "_target_": "datamodules.y.Other", "batch_size": 2}
