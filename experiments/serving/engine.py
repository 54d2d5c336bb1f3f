"""The serving engine: the model, its tokenizer, and one generation at a time from a bounded queue.

Loading goes through ``lit_models.checkpoints.load_net``, the loader ``lhp generate`` uses (a
platform ``.ckpt`` or SQLite checkpoint; an export directory once that loader reads one), with
optionally the weights of an H2Q weight store (``lhp h2q structure``) decoded into the net.

Requests wait in an ``asyncio.Queue`` of ``max_queue`` places (full: :class:`QueueFull`, the app's
429); one worker task takes them in order and runs each in a single generation thread, which
streams events back to the request: ``("delta", row, text)``, ``("finish", row, reason)``, then
``("end", usage)`` (or ``("error", message)``). A request whose client has gone sets ``cancelled``;
its generation stops at the next token, or is skipped while still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch import nn

from datamodules.tokenizers import build_tokenizer
from lhp.errors import UserError
from lit_models.checkpoints import check_state_dict_fits, load_net
from lit_models.compression.store import WeightStore, is_weight_store
from lit_models.generation import iter_generate

log = logging.getLogger("experiments.serve")
PROMPT_CONTEXT = 4  # prompt tokens decoded with the answer, so its first space/byte decodes right


@dataclass
class ServedModel:
    """A token model ready to sample from, and how it is named in the API."""

    name: str
    net: nn.Module
    tokenizer: Any
    device: str
    source: str

    @property
    def block_size(self) -> int:
        return int(self.net.config.block_size)


def load_weight_store(net: nn.Module, path: str | Path) -> dict[str, Any]:
    """Decode every tensor of an H2Q weight store into ``net`` (names with or without the
    recipe's ``net.`` prefix); the store's size and its coded layers, for the log."""
    path = Path(path)
    if not path.is_file() or not is_weight_store(path):
        raise UserError(f"weights={path}: not an H2Q weight store (an SQLite file written by "
                        "`lhp h2q structure`)")
    with WeightStore(path, "r", cache_bytes=0) as store:
        if store.get_metadata("checkpoint") is not None:
            raise UserError(f"weights={path} is a whole SQLite checkpoint, not a weight store: "
                            "serve it as ckpt_path=<it> without weights=")
        names = store.names()
        prefix = "net." if any(n.startswith("net.") for n in names) else ""
        wanted = [n for n in names if n.startswith(prefix)]
        coded = sum(1 for n in wanted if store.info(n).codec)
        state = {n[len(prefix):]: t for n, t in store.load_state_dict(wanted).items()}
    check_state_dict_fits(net, state, f"weight store {path}")
    net.load_state_dict(state, strict=True)
    return {"file_bytes": path.stat().st_size, "layers": len(state), "coded_layers": coded}


def _refuse_weights_only_store(path: Path) -> None:
    if path.is_file() and is_weight_store(path):
        with WeightStore(path, "r", cache_bytes=0) as store:
            if store.get_metadata("checkpoint") is None:
                raise UserError(f"ckpt_path={path} is an H2Q weight store (weights only, no "
                                "architecture or tokenizer): serve it as ckpt_path=<the checkpoint "
                                f"it was structured from> weights={path}")


def load_served_model(ckpt_path: str | Path, weights: str | Path | None = None,
                      device: str = "cpu", name: str | None = None) -> ServedModel:
    """The checkpoint's net and tokenizer (as ``lhp generate`` loads them), weights optionally
    replaced by an H2Q store's decoded ones; one UserError if the file is not a platform model."""
    path = Path(ckpt_path)
    _refuse_weights_only_store(path)
    net, meta = load_net(path, "tokens", "serve")
    if not isinstance(meta.get("tokenizer"), dict):
        raise UserError(f"checkpoint {path} stores no tokenizer, so its ids cannot be turned into text")
    source = str(path)
    if weights:
        info = load_weight_store(net, weights)
        source += (f" + weights {weights} ({info['coded_layers']} of {info['layers']} layers "
                   f"coded, {info['file_bytes'] / 1e6:.2f} MB)")
    model_name = name or meta["config"].get("run_name") or path.stem
    return ServedModel(str(model_name), net.to(device).eval(), build_tokenizer(meta["tokenizer"]),
                       device, source)


# ----------------------------------------------------------------------------- requests


class RequestError(Exception):
    """A request the engine refuses: HTTP ``status``, the offending ``param``, one-line message."""

    def __init__(self, param: str | None, message: str, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.param, self.message, self.status, self.kind = param, message, status, kind


class QueueFull(RequestError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(None, f"the server is busy (queue full); retry in {retry_after} s", 429,
                         "rate_limit_error")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Params:
    """Resolved sampling parameters of one request."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False


@dataclass
class Job:
    prompt_ids: list[int]
    params: Params
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    stream: bool = True


def _put_all(queue: asyncio.Queue, events: list[tuple]) -> None:
    for event in events:
        queue.put_nowait(event)


class RowText:
    """The text of one answer as it grows, released only when final: never part of a stop
    string, never an incomplete UTF-8 character."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.sent = stops, 0

    def step(self, text: str) -> tuple[str, bool]:
        """The new text to send, and whether a stop string ended the answer."""
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            end, stopped = min(cuts), True
        else:
            end, stopped = len(text.rstrip("\ufffd")), False
            head = text[:end]  # hold back a tail that may be the start of a stop string
            end -= max((k for s in self.stops for k in range(1, len(s)) if head.endswith(s[:k])),
                       default=0)
        end = max(end, self.sent)
        delta, self.sent = text[self.sent:end], end
        return delta, stopped

    def flush(self, text: str) -> str:
        delta, self.sent = text[self.sent:], len(text)
        return delta


class Metrics:
    """The Prometheus series of one server (its own registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lhp_serve_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("lhp_serve_request_latency_seconds",
                                 "enqueue to last token, per generation request", registry=r,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.ttft = Histogram("lhp_serve_time_to_first_token_seconds",
                              "enqueue to first generated token", registry=r,
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.tokens = Counter("lhp_serve_generated_tokens", "generated tokens", registry=r)
        self.tokens_per_s = Histogram("lhp_serve_generated_tokens_per_second",
                                      "generated tokens / generation time, per request", registry=r,
                                      buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000))
        self.queue_depth = Gauge("lhp_serve_queue_depth", "requests waiting or running", registry=r)


class Engine:
    """One model, one generation at a time, ``max_queue`` requests waiting at most."""

    def __init__(self, model: ServedModel, metrics: Metrics, *, max_queue: int = 16,
                 max_tokens_limit: int = 512, default_max_tokens: int = 128, max_n: int = 4,
                 max_prompt_chars: int = 100_000) -> None:
        self.model, self.metrics = model, metrics
        self.max_queue, self.max_tokens_limit = max_queue, max_tokens_limit
        self.default_max_tokens, self.max_n, self.max_prompt_chars = default_max_tokens, max_n, max_prompt_chars
        self._queue: asyncio.Queue[Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lhp-serve-generate")
        self._busy = 0
        self._mean_seconds = 1.0  # running mean of a request's duration (Retry-After)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = asyncio.create_task(self._work(), name="lhp-serve-worker")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ requests
    def prepare(self, prompt: str, field_name: str, *, max_tokens: int | None, n: int,
                truncate: str | None) -> list[int]:
        """The prompt's token ids, after the server's limits (``RequestError`` naming the field)."""
        if len(prompt) > self.max_prompt_chars:
            raise RequestError(field_name, f"{field_name}: {len(prompt):,} characters, more than "
                               f"this server's limit of {self.max_prompt_chars:,}")
        if max_tokens is not None and max_tokens > self.max_tokens_limit:
            raise RequestError("max_tokens", f"max_tokens: {max_tokens} is more than this server's "
                               f"limit of {self.max_tokens_limit}")
        if n > self.max_n:
            raise RequestError("n", f"n: {n} is more than this server's limit of {self.max_n}")
        tok = self.model.tokenizer
        ids = tok.encode(prompt) or [tok.eos_id]  # empty prompt: start a document
        block = self.model.block_size
        if len(ids) > block:
            if truncate != "left":
                raise RequestError(field_name, f"{field_name}: the prompt is {len(ids)} tokens, more "
                                   f"than the model's context of {block}; shorten it or pass "
                                   "truncate='left' to keep its last tokens")
            ids = ids[-block:]
        return ids

    def submit(self, job: Job) -> None:
        assert self._queue is not None, "engine not started"
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            waiting = self._queue.qsize() + self._busy
            raise QueueFull(max(1, math.ceil(waiting * self._mean_seconds))) from None
        self._depth()

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return (self._queue.qsize() if self._queue else 0) + self._busy

    def _depth(self) -> None:
        self.metrics.queue_depth.set(self.depth)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.cancelled.is_set():  # its client left while it waited
                job.loop.call_soon_threadsafe(job.events.put_nowait, ("end", None))
                self._depth()
                continue
            self._busy = 1
            self._depth()
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(self._executor, self._generate, job)
            finally:
                self._busy = 0
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - t0)
                self._depth()

    # ------------------------------------------------------------------ generation thread
    def _generate(self, job: Job) -> None:
        """Run ``job`` in the generation thread. A streamed job's events go to its request as
        they happen; a whole answer's are handed over at once (no event-loop wake-up per token)."""
        held: list[tuple] = []

        def emit(*event: Any) -> None:
            if job.stream:
                job.loop.call_soon_threadsafe(job.events.put_nowait, event)
            else:
                held.append(event)

        try:
            usage = self._decode(job, emit)
        except Exception as err:  # a failed generation answers its request; the server goes on
            log.exception("generation failed")
            held.clear()
            emit("error", f"generation failed: {type(err).__name__}: {err}")
        else:
            emit("end", usage)
        if held:
            job.loop.call_soon_threadsafe(_put_all, job.events, held)

    def _decode(self, job: Job, emit: Callable[..., None]) -> dict[str, int]:
        p, m = job.params, self.model
        tok, eos = m.tokenizer, m.tokenizer.eos_id
        context = job.prompt_ids[-PROMPT_CONTEXT:]
        base = tok.decode(context)
        idx = torch.tensor([job.prompt_ids] * p.n, dtype=torch.long, device=m.device)
        seed = p.seed if p.seed is not None else random.getrandbits(63)
        generator = torch.Generator(device=m.device).manual_seed(seed)
        rows = [RowText(p.stop) for _ in range(p.n)]
        ids: list[list[int]] = [[] for _ in range(p.n)]
        done: list[str | None] = [None] * p.n
        counts = [0] * p.n
        start = time.perf_counter()
        first = True

        def text_of(row: int) -> str:
            full = tok.decode(context + ids[row])
            return full[len(base):] if full.startswith(base) else tok.decode(ids[row])

        steps = iter_generate(m.net, idx, p.max_tokens, p.temperature, p.top_k, True, generator,
                              p.top_p if p.top_p < 1.0 else None)
        try:
            for nxt in steps:
                if first:
                    self.metrics.ttft.observe(time.perf_counter() - job.enqueued)
                    first = False
                if job.cancelled.is_set():
                    break
                for row, token in enumerate(nxt[:, 0].tolist()):
                    if done[row]:
                        continue
                    counts[row] += 1
                    if token == eos and not p.ignore_eos:
                        delta, reason = rows[row].flush(text_of(row)), "stop"
                    else:
                        ids[row].append(token)
                        delta, stopped = rows[row].step(text_of(row))
                        reason = "stop" if stopped else None
                        if reason is None and counts[row] >= p.max_tokens:
                            delta, reason = delta + rows[row].flush(text_of(row)), "length"
                    if delta:
                        emit("delta", row, delta)
                    if reason:
                        done[row] = reason
                        emit("finish", row, reason)
                if all(done):
                    break
        finally:
            steps.close()
        if not job.cancelled.is_set():
            for row in range(p.n):  # max_tokens = 0 steps cannot happen (>= 1), but be total
                if not done[row]:
                    emit("finish", row, "length")
        total = sum(counts)
        seconds = time.perf_counter() - start
        self.metrics.tokens.inc(total)
        self.metrics.latency.observe(time.perf_counter() - job.enqueued)
        if total and seconds > 0:
            self.metrics.tokens_per_s.observe(total / seconds)
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": total,
                "total_tokens": len(job.prompt_ids) + total}
