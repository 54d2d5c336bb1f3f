"""Serving load test: `lhp serve` at concurrency 1, 4, 8, streaming and not, against `lhp generate`.

    lhp bench serve [--ckpt PATH] [--requests 200] [--concurrency 1,4,8] [--max-tokens 64]
        [--rounds 20] [--threads N] [--quick] [--out report.json]

Starts its own server (``python -m experiments.serve`` in a subprocess on a free loopback port)
on ``--ckpt`` (default: the newest trained gpt_wikitext2 checkpoint; ``--quick`` without one
trains a tiny model first) and sends ``--requests`` completion requests per (streaming,
concurrency) cell from that many client threads: prompts from a fixed list, ``temperature 0.8,
top_k 50`` (``lhp generate``'s defaults), ``ignore_eos`` so every request generates
``--max-tokens`` tokens. Per cell: p50/p99 latency, p50/p99 time to first token (streaming),
generated tokens/s over the cell's wall time, errors (must be 0). Then ``--rounds`` alternated
rounds of one ``lhp generate`` run (``experiments.generate.generate_text``: its own logged
tokens/s, model loading excluded) and one sequential server request with the same prompt and
length: the server's tokens/s over generate's is the last line (goal >= 0.9).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from experiments import REPO_ROOT
from experiments.bench import common
from lhp.errors import UserError, entry_point

PROMPTS = ("The history of the city", "In 1998 , the band", "The game was released",
           "He was born in", "The river flows", "During the war , the",
           "The species is found", "After the season , he")
TINY = ["experiment=smoke_tiny", "data.block_size=128", "trainer.max_steps=30", "test=false",
        "logger=csv"]
_GENERATE_LOG = re.compile(r"(\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s")  # rate: not rounded to 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(ckpt: Path, threads: int, max_queue: int, max_tokens: int, log_dir: Path) -> Iterator[str]:
    """``python -m experiments.serve`` on a free loopback port; yields its base URL."""
    port = _free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", f"ckpt_path='{ckpt}'", f"port={port}",
         f"threads={threads}", f"max_queue={max_queue}", f"max_tokens_limit={max(max_tokens, 1)}",
         f"default_max_tokens={max(max_tokens, 1)}", "log_level=warning",
         f"paths.log_dir={log_dir}"], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise UserError(f"the server exited with {proc.returncode}: "
                                f"{(log_dir / 'server.log').read_text()[-1500:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise UserError(f"the server did not answer /health within 300 s ({log_dir / 'server.log'})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def one_request(client: httpx.Client, prompt: str, max_tokens: int, stream: bool,
                seed: int) -> dict[str, Any]:
    """Latency, time to first token and generated tokens of one completion (error: its text)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 50,
            "seed": seed, "ignore_eos": True, "stream": stream}
    t0 = time.perf_counter()
    try:
        if not stream:
            r = client.post("/v1/completions", json=body)
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.text[:200]}"}
            return {"latency": time.perf_counter() - t0, "ttft": None,
                    "tokens": r.json()["usage"]["completion_tokens"]}
        ttft, tokens = None, 0
        with client.stream("POST", "/v1/completions",
                           json={**body, "stream_options": {"include_usage": True}}) as r:
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.read()[:200]!r}"}
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}
    except httpx.HTTPError as err:
        return {"error": f"{type(err).__name__}: {err}"}


def load_cell(url: str, requests: int, concurrency: int, max_tokens: int, stream: bool) -> dict[str, Any]:
    """``requests`` completions from ``concurrency`` client threads; the cell's figures."""
    clients = [httpx.Client(base_url=url, timeout=600) for _ in range(concurrency)]

    def work(i: int) -> dict[str, Any]:
        return one_request(clients[i % concurrency], PROMPTS[i % len(PROMPTS)], max_tokens, stream, i)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(work, range(requests)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    ok = [r for r in results if "error" not in r]
    lat = np.array([r["latency"] for r in ok]) if ok else np.array([np.nan])
    ttft = np.array([r["ttft"] for r in ok if r["ttft"] is not None] or [np.nan])
    errors = [r["error"] for r in results if "error" in r]
    return {"stream": stream, "concurrency": concurrency, "requests": requests, "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
            "ttft_p50_s": None if not stream else float(np.percentile(ttft, 50)),
            "ttft_p99_s": None if not stream else float(np.percentile(ttft, 99)),
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall, "wall_s": wall}


class _GenerateFigures(logging.Handler):
    """Collects ``lhp generate``'s own "N tokens in X s (R tokens/s" log lines; the time is
    N / R (X is rounded to 10 ms, which a fast tiny model undercuts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.seconds = 0, 0.0

    def emit(self, record: logging.LogRecord) -> None:
        match = _GENERATE_LOG.search(record.getMessage())
        if match:
            tokens, rate = int(match.group(1)), float(match.group(2))
            self.tokens += tokens
            self.seconds += tokens / rate if rate > 0 else 0.0


def versus_generate(url: str, ckpt: Path, rounds: int, max_tokens: int, work: Path) -> dict[str, float]:
    """Alternated rounds: one ``lhp generate`` run, one sequential server request (same prompt,
    length and sampling); tokens/s of each over all rounds."""
    from experiments.generate import generate_text
    from experiments.utils import compose_config

    figures = _GenerateFigures()
    logger = logging.getLogger("experiments.generate")
    logger.addHandler(figures)
    level = logger.level
    logger.setLevel(logging.INFO)
    served_tokens, served_s = 0, 0.0
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            for i in common.progress(range(rounds), "vs lhp generate", total=rounds):
                prompt = PROMPTS[i % len(PROMPTS)]
                generate_text(compose_config("generate", [
                    f"ckpt_path='{ckpt}'", f"prompt='{prompt}'", f"max_new_tokens={max_tokens}",
                    "temperature=0.8", "top_k=50", f"seed={i}"], work / f"generate{i}"))
                r = one_request(client, prompt, max_tokens, False, i)
                if "error" in r:
                    raise UserError(f"server request failed: {r['error']}")
                served_tokens += r["tokens"]
                served_s += r["latency"]
    finally:
        logger.removeHandler(figures)
        logger.setLevel(level)
    if not figures.tokens:
        raise UserError("lhp generate logged no tokens/s figure")
    return {"generate_tokens_per_s": figures.tokens / figures.seconds,
            "server_tokens_per_s": served_tokens / served_s}


@entry_point
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=200, help="requests per cell")
    parser.add_argument("--concurrency", default="1,4,8", help="client threads, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20, help="alternated rounds vs lhp generate")
    parser.add_argument("--quick", action="store_true",
                        help="12 requests, concurrency 1,4, 16 tokens, 2 rounds (CI)")
    args = common.parse_args(parser, argv)
    if args.quick:
        args.requests, args.concurrency, args.max_tokens, args.rounds = 12, "1,4", 16, 2
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        raise UserError(f"--concurrency: comma-separated integers, got {args.concurrency!r}") from None
    if min(levels) < 1 or args.requests < 1 or args.max_tokens < 1:
        raise UserError("--concurrency, --requests and --max-tokens must be >= 1")
    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="lhp-bench-serve-") as tmp:
        work = Path(tmp)
        ckpt = args.ckpt
        if ckpt is None and args.quick:
            common.train_run(TINY, work / "tiny")
            ckpt = work / "tiny" / "checkpoints" / "last.ckpt"
        ckpt = ckpt or common.default_checkpoint()
        with server(ckpt, threads, max(levels) + 2, args.max_tokens, work / "server") as url:
            with httpx.Client(base_url=url, timeout=600) as warm:  # first request: lazy inits
                one_request(warm, PROMPTS[0], args.max_tokens, False, 0)
            cells = [(s, c) for s in (False, True) for c in levels]
            rows = [load_cell(url, args.requests, c, args.max_tokens, s)
                    for s, c in common.progress(cells, "load test", total=len(cells))]
            versus = versus_generate(url, ckpt, args.rounds, args.max_tokens, work)
    ratio = versus["server_tokens_per_s"] / versus["generate_tokens_per_s"]
    errors = sum(r["errors"] for r in rows)
    notes = [f"checkpoint {ckpt}; {args.max_tokens} tokens per request (ignore_eos), temperature "
             f"0.8, top_k 50; torch threads {threads} (server and lhp generate); errors {errors}"]
    notes += [f"first error: {r['first_error']}" for r in rows if r["first_error"]][:1]
    headline = (f"serve (tokens/s, concurrency 1, {args.max_tokens} tokens/request): server "
                f"{versus['server_tokens_per_s']:.1f} vs lhp generate {versus['generate_tokens_per_s']:.1f} "
                f"-> {ratio:.2f}x (goal >= 0.9); load-test errors {errors}")
    common.report(rows, headline, args.out, notes=notes, meta={**versus, "server_vs_generate": ratio,
                                                              "checkpoint": str(ckpt)},
                  columns=[("stream", "stream", ""), ("concurrency", "concurrency", ""),
                           ("requests", "requests", ""), ("errors", "errors", ""),
                           ("p50_s", "p50 latency s", ".3f"), ("p99_s", "p99 latency s", ".3f"),
                           ("ttft_p50_s", "p50 TTFT s", ".3f"), ("ttft_p99_s", "p99 TTFT s", ".3f"),
                           ("tokens_per_s", "tokens/s", ".1f"), ("wall_s", "wall s", ".1f")])
    return {"rows": rows, **versus, "server_vs_generate": ratio}


if __name__ == "__main__":
    main()
