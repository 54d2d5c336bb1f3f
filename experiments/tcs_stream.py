"""TCS streaming over a text file: ``lhp tcs-stream ckpt_path=... text_path=...``.

(``python -m experiments.tcs_stream ...`` and ``lhp-tcs-stream`` are the same Hydra app.)

The text is fed to a ``StatefulEmbedder`` (KV cache, windowed eviction) ``text_chunk_chars``
characters at a time; each chunk's hidden states go to a ``StreamingAnalyzer`` (sliding-window
H0 + landmark H1), whose Betti-change events are printed. The run writes ``betti.png`` (beta0
and beta1 per analysed window, event marks, over the text position in characters),
``events.json`` and ``summary.json`` to the output directory, logs the plot and the summary to
the configured loggers (W&B offline by default, as an image via ``WandbLogger.log_image``) and
ends with the end-to-end throughput (tokens/s, embedder + topology).

Window diagrams go through a ``TopologyCache`` (``cache.*``: memory LRU, then an SQLite file
shared by runs), so a text streamed again through the same model is answered from the cache;
the summary reports its hit rate and per-tier latencies (``cache_*`` keys).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import track

from experiments import CONFIG_DIR
from experiments.utils import apply_extras, instantiate_group, task_wrapper, wandb_loggers
from lhp.errors import UserError, entry_point
from lit_models.embedder import StatefulEmbedder
from lit_models.topology import BettiEvent, StreamingAnalyzer, TopologyCache

log = logging.getLogger("experiments.tcs_stream")
EVENT_STYLE = {"split": ("tab:red", "^"), "merge": ("tab:green", "v"),
               "loop_birth": ("tab:purple", "^"), "loop_death": ("tab:brown", "v")}


@dataclass
class StreamTrace:
    """What the analyzer reported along a stream: one row per analysed window, and events."""

    positions: list[int] = field(default_factory=list)  # tokens seen at each analysis
    betti0: list[int] = field(default_factory=list)
    betti1: list[int] = field(default_factory=list)
    events: list[BettiEvent] = field(default_factory=list)
    _last_analysis: int = 0

    def push(self, analyzer: StreamingAnalyzer, hidden: torch.Tensor | np.ndarray) -> None:
        """Push ``hidden`` (n, D) into ``analyzer`` in slices that each trigger at most one
        analysis, recording the Betti numbers of every analysed window."""
        i = 0
        while i < len(hidden):
            due = analyzer.chunk_points - (analyzer.points_seen - self._last_analysis)
            part = hidden[i:i + max(due, 1)]
            before = analyzer.windows_analysed
            self.events += analyzer.push_batch(part)
            i += len(part)
            if analyzer.windows_analysed > before:
                self._last_analysis = analyzer.points_seen
                betti = analyzer.betti()
                self.positions.append(analyzer.points_seen)
                self.betti0.append(betti.get(0, -1))
                self.betti1.append(betti.get(1, -1))


def build_embedder(cfg: DictConfig) -> StatefulEmbedder:
    """From ``ckpt_path`` (platform checkpoint) or ``hf_path`` (Hugging Face directory)."""
    if bool(cfg.get("ckpt_path")) == bool(cfg.get("hf_path")):
        raise UserError("give exactly one of ckpt_path=<platform .ckpt> or hf_path=<Hugging Face "
                         f"model dir>; got ckpt_path={cfg.get('ckpt_path')!r}, "
                         f"hf_path={cfg.get('hf_path')!r}")
    kwargs = OmegaConf.to_container(cfg.embedder, resolve=True)
    kwargs["device"] = cfg.device
    if cfg.get("ckpt_path"):
        return StatefulEmbedder.from_checkpoint(cfg.ckpt_path, **kwargs)
    return StatefulEmbedder.from_hf(cfg.hf_path, **kwargs)


def read_text(path: str | Path, max_chars: int | None = None) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text_path {str(path)!r} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"text_path {str(path)!r} is not UTF-8: {err}") from err
    if max_chars is not None:
        if max_chars <= 0:
            raise UserError(f"max_chars must be a positive int or null, got {max_chars!r}")
        text = text[:max_chars]
    if not text.strip():
        raise UserError(f"text_path {str(path)!r} is empty")
    return text


def char_positions(embedder: StatefulEmbedder, ids: list[int]) -> np.ndarray:
    """Characters of text covered by the first t tokens, for t = 0..len(ids)."""
    counts = np.asarray(embedder.tokenizer.token_char_counts(), dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts[np.asarray(ids, dtype=np.int64)])])


def plot_trace(trace: StreamTrace, to_chars: np.ndarray, path: Path, title: str) -> Path:
    """beta0 and beta1 per analysed window over the text position (characters), events marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax0, ax1 = fig.subplots(2, 1, sharex=True)
    x = to_chars[np.asarray(trace.positions, dtype=np.int64)] if trace.positions else []
    ax0.step(x, trace.betti0, where="post", color="tab:blue", lw=1)
    ax1.step(x, trace.betti1, where="post", color="tab:orange", lw=1)
    for ax, dim in ((ax0, 0), (ax1, 1)):
        for kind, (color, marker) in EVENT_STYLE.items():
            ev = [e for e in trace.events if e.kind == kind and e.dim == dim]
            if ev:
                ax.scatter(to_chars[[e.position for e in ev]], [e.after for e in ev], s=18,
                           c=color, marker=marker, label=f"{kind} ({len(ev)})", zorder=3)
        ax.set_ylabel(f"beta{dim}")
        if any(e.dim == dim for e in trace.events):
            ax.legend(fontsize=7, loc="upper right")
    ax1.set_xlabel("text position (characters)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


@task_wrapper
def tcs_stream(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the stream; returns (summary, objects)."""
    apply_extras(cfg)
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(cfg.text_chunk_chars, int) or cfg.text_chunk_chars <= 0:
        raise UserError(f"text_chunk_chars must be a positive int, got {cfg.text_chunk_chars!r}")
    text = read_text(cfg.text_path, cfg.get("max_chars"))
    embedder = build_embedder(cfg)
    cache = build_cache(cfg)
    try:
        return _stream(cfg, text, embedder, cache)
    finally:
        if cache is not None:
            cache.close()


def build_cache(cfg: DictConfig) -> TopologyCache | None:
    """The topology cache of ``cfg.cache`` (None when disabled)."""
    spec = cfg.get("cache") or {}
    if not spec.get("enabled", False):
        return None
    path = spec.get("path")
    if path and Path(path).is_dir():
        raise UserError(f"cache.path {path!r} is a directory; give a file path (or null for a "
                        "memory-only cache)")
    try:
        return TopologyCache(path, memory_items=spec.get("memory_items", 256),
                             bloom=bool(spec.get("bloom", False)))
    except (ValueError, OSError) as err:
        raise UserError(f"cache: cannot open the topology cache at {path!r}: {err}") from err


def _stream(cfg: DictConfig, text: str, embedder: StatefulEmbedder,
            cache: TopologyCache | None) -> tuple[dict[str, Any], dict[str, Any]]:
    analyzer = StreamingAnalyzer(**OmegaConf.to_container(cfg.analyzer, resolve=True),
                                 cache=cache)
    loggers = instantiate_group(cfg.get("logger"), "logger")
    log.info(f"{embedder!r}; {len(text):,} characters from {cfg.text_path}")

    trace, ids = StreamTrace(), []
    embed_s = topo_s = 0.0
    start = time.perf_counter()
    step = cfg.text_chunk_chars
    chunks = range(0, len(text) + step, step)  # the last round flushes the held-back text
    for i in track(chunks, description="streaming chunks", transient=True,
                   disable=not sys.stdout.isatty()):
        t0 = time.perf_counter()
        out = embedder.feed(text[i:i + step]) if i < len(text) else embedder.flush()
        t1 = time.perf_counter()
        trace.push(analyzer, out.hidden.float())
        embed_s += t1 - t0
        topo_s += time.perf_counter() - t1
        ids += out.ids
    wall = time.perf_counter() - start
    to_chars = char_positions(embedder, ids)

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = Counter(e.kind for e in trace.events)
    stats = analyzer.stats()
    summary = {
        "tokens": len(ids), "characters": len(text), "windows_analysed": stats["windows_analysed"],
        "events": len(trace.events), **{f"events_{k}": kinds.get(k, 0) for k in EVENT_STYLE},
        "scale": stats["scale"], "latency_ms_p50": stats["latency_ms_p50"],
        "latency_ms_max": stats["latency_ms_max"], "evictions": embedder.evictions,
        "embed_seconds": embed_s, "topology_seconds": topo_s, "wall_seconds": wall,
        "tokens_per_s": len(ids) / wall, "embed_tokens_per_s": len(ids) / max(embed_s, 1e-9),
        **({f"cache_{k}": v for k, v in cache.stats().items()} if cache is not None else {}),
    }
    events = [{**asdict(e), "char_position": int(to_chars[e.position])} for e in trace.events]
    (out_dir / "events.json").write_text(json.dumps(events, indent=1))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plot = plot_trace(trace, to_chars, out_dir / "betti.png",
                      f"{Path(cfg.text_path).name}: {len(ids):,} tokens, layer "
                      f"{embedder.layer_name}, window {analyzer.window}, scale "
                      f"{stats['scale']:.3g}")
    for lg in loggers:
        lg.log_metrics({f"tcs/{k}": float(v) for k, v in summary.items()}, step=0)
    for lg in wandb_loggers(loggers):
        lg.log_image(key="tcs/betti", images=[str(plot)], step=0)

    for e in events[: cfg.print_events]:
        print(f"{e['kind']:<10} token {e['position']:>8,}  char {e['char_position']:>9,}  "
              f"beta{e['dim']} {e['before']} -> {e['after']}")
    if len(events) > cfg.print_events:
        print(f"... {len(events) - cfg.print_events} more events in {out_dir / 'events.json'}")
    print(f"events: {dict(kinds)}; windows analysed: {stats['windows_analysed']}; analysis "
          f"latency p50 {stats['latency_ms_p50']:.1f} ms; plot: {plot}")
    if cache is not None:
        print(f"topology cache: hit rate {summary['cache_hit_rate']:.1%} ("
              f"{summary['cache_memory_hits']} memory, {summary['cache_disk_hits']} disk, "
              f"{summary['cache_misses']} misses); lookup ms: memory hit "
              f"{summary['cache_ms_memory_hit']:.3f}, disk hit {summary['cache_ms_disk_hit']:.3f}, "
              f"miss {summary['cache_ms_miss']:.3f}; compute on a miss "
              f"{summary['cache_ms_compute']:.1f} ms")
    print(f"{len(ids):,} tokens in {wall:.1f} s (embedder {embed_s:.1f} s, topology "
          f"{topo_s:.1f} s): {summary['tokens_per_s']:,.0f} tokens/s end to end")
    return summary, {"embedder": embedder, "analyzer": analyzer, "trace": trace,
                     "loggers": loggers}


@entry_point
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="tcs_stream")
def main(cfg: DictConfig) -> None:
    tcs_stream(cfg)


if __name__ == "__main__":
    main()
