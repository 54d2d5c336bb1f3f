"""The GPU check suite: every GPU figure of the seeds' targets in one run of at most ~4 minutes.

    python -m experiments.bench.gpu_suite [--tiny] [--device cuda] [--only NAME ...]
        [--budget 240] [--out report.json]

An orchestrator over ``CHECKS``, a list of ``"module:function"`` names. Each check is
``def gpu_checks(device: torch.device, tiny: bool) -> Iterator[tuple[str, float, str]]`` and
yields ``(name, value, unit)`` as each figure becomes available; the suite prints every figure
at once (a cut-off run still reports what it had), catches a failing check, reports it and goes
on with the next, and reports a check whose module or function does not exist (yet) as
``missing``. A check not started within ``--budget`` seconds is ``skipped``. The last line is
the summary; the exit code is 1 when a check failed (missing and skipped ones do not count).
``--tiny`` runs every check with tiny sizes on the CPU (a test of the default suite runs it, so
the suite cannot rot). Adding a check is one line in ``CHECKS``.
"""

from __future__ import annotations

import gc
import importlib
import math
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from experiments.bench import common
from lhp.errors import entry_point

CHECKS = [
    "experiments.bench.geo_attention:gpu_checks",        # Fisher-Rao FlexAttention vs SDPA, equality
    "experiments.bench.gpu_suite:generation_checks",     # 512 tokens at 124M with the KV cache
    "experiments.bench.gpu_suite:training_checks",       # GPT-124M tokens/s and MFU
    "experiments.bench.vram_estimate:gpu_checks",        # VRAM estimate vs measured peak (issue 20.3)
    "experiments.bench.gpu_suite:checkpointing_checks",  # qtg_356m with activation checkpointing
    "experiments.bench.persistence:gpu_checks",          # exact H0 of 1M points
    "experiments.bench.strategies:gpu_checks",           # DDP / FSDP tokens/s with > 1 GPU
    "experiments.bench.compile:gpu_checks",              # torch.compile on/off tokens/s
]
BUDGET_S = 240.0
# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) of known GPUs, matched by name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12,
              "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12,
              "V100": 125e12, "T4": 65e12}
GPT_124M = dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
TINY_GPT = dict(vocab_size=64, n_layer=1, n_head=2, n_embd=32)
Figure = tuple[str, float, str]


# ----------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` from ``PEAK_FLOPS`` (longest matching name), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    hits = [key for key in PEAK_FLOPS if key in name]
    return PEAK_FLOPS[max(hits, key=len)] if hits else None


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: ``max_memory_allocated`` since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the training precision there), nothing on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def timed_training(arch: str, cfg: dict, batch: int, seq: int, steps: int, warmup: int,
                   device: torch.device) -> tuple[float, torch.nn.Module]:
    """Seconds per AdamW step (CE + the architecture's loss terms) after ``warmup`` steps."""
    from lit_models.archs import build_arch

    torch.manual_seed(0)
    net = build_arch(arch, {**cfg, "block_size": seq}).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, cfg["vocab_size"], (batch, seq + 1), device=device)

    def step() -> None:
        with autocast(device):
            logits, aux = net(x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            loss = loss + sum(aux.values()) if aux else loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps, net


# ----------------------------------------------------------------------------- this file's checks
def generation_checks(device: torch.device, tiny: bool) -> Iterator[Figure]:
    """512 new tokens (tiny: 16) at 124M with the KV cache, greedy, random weights: QTG (the
    seed's target: < 2 s) and the GPT baseline."""
    from lit_models.archs import build_arch
    from lit_models.generation import generate

    size, new = (TINY_GPT, 16) if tiny else (GPT_124M, 512)
    prompt_len = 8
    for arch in ("qtg", "gpt"):
        torch.manual_seed(0)
        net = build_arch(arch, {**size, "block_size": prompt_len + new}).to(device).eval()
        prompt = torch.randint(0, size["vocab_size"], (1, prompt_len), device=device)
        generate(net, prompt, 4, temperature=0)  # warm-up: kernels, allocator
        sync(device)
        t0 = time.perf_counter()
        out = generate(net, prompt, new, temperature=0)
        sync(device)
        secs = time.perf_counter() - t0
        if out.size(1) != prompt_len + new:
            raise RuntimeError(f"{arch}: generated {out.size(1) - prompt_len} tokens, expected {new}")
        yield f"generate {new} tokens {arch} {'tiny' if tiny else '124M'} KV cache (target < 2 s)", secs, "s"
        del net


def training_checks(device: torch.device, tiny: bool) -> Iterator[Figure]:
    """GPT-124M training (bf16 autocast, AdamW, batch 8 x 1024): tokens/s and model FLOPs
    utilisation, FLOPs per token = 6 N (N without position embeddings) + 12 L d T (attention)."""
    size, batch, seq, steps, warmup = (TINY_GPT, 2, 16, 2, 1) if tiny else (GPT_124M, 8, 1024, 10, 3)
    per_step, net = timed_training("gpt", size, batch, seq, steps, warmup, device)
    tokens_s = batch * seq / per_step
    yield f"train gpt {'tiny' if tiny else '124M'} b{batch}x{seq}", tokens_s, "tokens/s"
    flops_per_token = 6 * net.num_params(non_embedding=True) + 12 * size["n_layer"] * size["n_embd"] * seq
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if peak is None:
        yield f"MFU (peak FLOP/s unknown for {name})", math.nan, "unknown"
    else:
        yield f"MFU vs {name} bf16 dense peak {peak / 1e12:.0f} TFLOP/s", flops_per_token * tokens_s / peak, "fraction"


def checkpointing_checks(device: torch.device, tiny: bool) -> Iterator[Figure]:
    """qtg_356m (24 x 1024, 16 heads, context 512) with activation checkpointing, bf16 autocast,
    micro-batch 2 (what the budget's fit mode picks for 7 GB): peak memory and tokens/s."""
    size = dict(TINY_GPT, n_layer=2) if tiny else dict(GPT_124M, n_layer=24, n_head=16, n_embd=1024)
    batch, seq, steps = (2, 16, 2) if tiny else (2, 512, 5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step, _ = timed_training("qtg", {**size, "activation_checkpointing": True}, batch, seq,
                                 steps, 1, device)
    label = "tiny" if tiny else "356m"
    yield f"train qtg_{label} activation checkpointing b{batch}x{seq}", batch * seq / per_step, "tokens/s"
    yield f"peak memory qtg_{label} activation checkpointing b{batch}x{seq} (budget 7 GB)", peak_memory_gb(device), "GB"


# ----------------------------------------------------------------------------- orchestrator
def resolve(spec: str) -> Callable[[torch.device, bool], Iterator[Figure]] | None:
    """The check function of ``"module:function"``, or None when the module or the function
    does not exist (yet); any other import error propagates (the check fails)."""
    module_name, _, func = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:  # the check's own module (or its package), not a dependency
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            return None
        raise
    return getattr(module, func or "gpu_checks", None)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_suite(checks: list[str], device: torch.device, tiny: bool, budget_s: float) -> list[dict]:
    """Run ``checks`` in order, printing each figure as it comes; one result dict per check."""
    start, results = time.perf_counter(), []
    for spec in checks:
        result = {"check": spec, "status": "ok", "figures": [], "seconds": 0.0}
        results.append(result)
        if time.perf_counter() - start > budget_s:
            result["status"] = "skipped"
            print(f"[{spec}] skipped: the suite's {budget_s:.0f} s budget is spent", flush=True)
            continue
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            fn = resolve(spec)
            if fn is None:
                result["status"] = "missing"
                print(f"[{spec}] missing: no such module or function (yet)", flush=True)
                continue
            for name, value, unit in fn(device, tiny):
                result["figures"].append({"name": name, "value": float(value), "unit": unit})
                print(f"[{spec}] {name}: {float(value):.4g} {unit}", flush=True)
        except Exception as err:  # noqa: BLE001 - a failing check is reported, the suite goes on
            result["status"] = "failed"
            result["error"] = f"{type(err).__name__}: {err}"
            print(f"[{spec}] FAILED: {result['error']}", flush=True)
            traceback.print_exc(file=sys.stderr)
        finally:
            result["seconds"] = time.perf_counter() - t0
            result["cpu_seconds"] = time.process_time() - cpu0
            _free(device)
    return results


def summary(results: list[dict], device: torch.device, seconds: float) -> str:
    by = {s: [r["check"].split(":")[0].rsplit(".", 1)[-1] + ":" + r["check"].split(":")[1]
              for r in results if r["status"] == s] for s in ("ok", "failed", "missing", "skipped")}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    figures = sum(len(r["figures"]) for r in results)
    parts = [f"{len(by['ok'])} ok"] + [f"{len(v)} {s} ({', '.join(v)})" for s, v in by.items()
                                       if s != "ok" and v]
    return f"gpu suite on {name}: {figures} figures from {len(results)} checks in {seconds:.0f} s; " \
           + ", ".join(parts)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the CI smoke run)")
    parser.add_argument("--device", default=None, help="default: cuda when present (cpu with --tiny)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only the checks whose 'module:function' contains one of these")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds after which no further check starts (default %(default)s)")
    args = common.parse_args(parser, argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    checks = [c for c in CHECKS if not args.only or any(o in c for o in args.only)]
    if not checks:
        parser.error(f"--only {args.only} matches none of {CHECKS}")
    t0 = time.perf_counter()
    results = run_suite(checks, device, args.tiny, args.budget)
    rows = [{"check": r["check"], "status": r["status"], "seconds": r["seconds"], **f}
            for r in results for f in (r["figures"] or [{}])]
    common.report(rows, summary(results, device, time.perf_counter() - t0), args.out,
                  meta={"results": results, "device": str(device), "tiny": args.tiny})
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
