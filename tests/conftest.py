"""Shared fixtures: offline environment, a network guard, and Hydra configs composed in-process."""

from __future__ import annotations

import os

# Before anything imports wandb / datasets: no test may reach the network.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from experiments.utils import compose_config as _compose

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any in-process connection that is not to this machine."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def compose_config(config_name: str, overrides: list[str], out_dir: Path,
                   data_dir: Path | None = None, log_dir: Path | None = None) -> DictConfig:
    """The platform's in-process composition, with every output under the test's tmp dirs."""
    cfg = _compose(config_name, overrides, out_dir)
    with open_dict(cfg):
        cfg.paths.log_dir = str(log_dir or out_dir / "logs")
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        if "extras" in cfg:
            cfg.extras.print_config = False
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated-data directory for the session (the mock corpus is written once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path) -> Callable[..., DictConfig]:
    def make(overrides: list[str] | None = None, config_name: str = "train",
             out: str = "run") -> DictConfig:
        return compose_config(config_name, list(overrides or []), tmp_path / out, data_dir)

    return make
