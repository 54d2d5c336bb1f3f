"""Serve a checkpoint over HTTP: ``python -m experiments.serve ckpt_path=<file> [port=8000]``.

An OpenAI-compatible API (``/v1/completions``, ``/v1/chat/completions`` with ``stream=true``,
``/v1/models``), ``/health``, Prometheus ``/metrics`` and a chat page at ``/`` (docs/serving.md).
The model loads as ``lhp generate`` loads it; ``weights=<store.db>`` decodes an H2Q weight store
into it. Requests run one at a time from a queue of ``max_queue`` places.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import hydra
import torch
import uvicorn
from fastapi import FastAPI
from omegaconf import DictConfig, OmegaConf

from experiments import CONFIG_DIR
from experiments.serving.app import create_app
from experiments.serving.engine import Engine, Metrics, load_served_model
from lhp.config_check import RULES, check_config, int_at_least
from lhp.errors import UserError, entry_point

log = logging.getLogger("experiments.serve")

SERVE_RULES = {**RULES, "port": int_at_least(0), "threads": int_at_least(1, None),
               "max_queue": int_at_least(1), "max_tokens_limit": int_at_least(1),
               "default_max_tokens": int_at_least(1), "max_n": int_at_least(1),
               "max_prompt_chars": int_at_least(1), "max_body_bytes": int_at_least(1)}


def build_app(cfg: DictConfig) -> FastAPI:
    """The app for ``cfg`` (conf/serve.yaml): model loaded, limits checked."""
    check_config(OmegaConf.to_container(cfg, resolve=True), SERVE_RULES)
    if cfg.default_max_tokens > cfg.max_tokens_limit:
        raise UserError(f"config key default_max_tokens: {cfg.default_max_tokens} is more than "
                        f"max_tokens_limit={cfg.max_tokens_limit}")
    model = load_served_model(cfg.ckpt_path, cfg.weights, cfg.device, cfg.model_name)
    engine = Engine(model, Metrics(), max_queue=cfg.max_queue, max_tokens_limit=cfg.max_tokens_limit,
                    default_max_tokens=cfg.default_max_tokens, max_n=cfg.max_n,
                    max_prompt_chars=cfg.max_prompt_chars)
    log.info(f"model {model.name!r} from {model.source}: context {model.block_size} tokens, "
             f"{sum(p.numel() for p in model.net.parameters()):,} parameters")
    return create_app(engine, cfg.max_body_bytes)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); pass another "
                            "port=<n> (or host=)") from None


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread (port 0: a free one); yields the base
    URL and stops the server on exit. For tests, benchmarks and notebooks."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="lhp-serve-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)


@entry_point
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _check_port(cfg.host, cfg.port)
    app = build_app(cfg)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    log.info(f"chat page http://{shown}:{cfg.port}/ ; API base URL http://{shown}:{cfg.port}/v1")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)


if __name__ == "__main__":
    main()
