"""The VRAM budget's estimate against the measured training peak, per architecture and size.

    lhp bench vram_estimate [--quick] [--sizes small,124m] [--steps 3] [--out report.json]
    lhp bench vram_estimate --table          # memory per GPU under DDP / FSDP (docs table)

Each measurement trains a fresh network of the registry for ``--steps`` steps on random tokens
in the order Lightning's automatic optimization uses (forward + loss, ``zero_grad(set_to_none)``,
backward, gradient clipping at 1.0, the platform's AdamW step) and compares the peak with
``callbacks.vram_budget.estimate_memory`` for the same net, micro-batch and precision.

* CPU (this command): fp32, each run in its own Python process; the measured peak is the process's
  peak RSS (``VmHWM``) above its RSS just before the network is built, i.e. weights included,
  interpreter and libraries excluded. It counts what glibc's allocator keeps and the CPU
  kernels' temporaries; the estimate is not tuned to either. Each run is repeated with glibc's
  mmap threshold held at its initial 128 KiB (freed tensors leave the RSS at once, as they leave
  CUDA's allocated bytes), a second column that separates the model's error from the allocator's.
  CPU SDPA has no fused kernel with attention dropout (its math path keeps (s, s) matrices that
  the estimate, modelling CUDA's fused kernels, leaves out): compare dropout-free sizes.
* CUDA (:func:`gpu_checks`, run by ``experiments.bench.gpu_suite``): ``max_memory_allocated``
  above the allocation before the build, bf16-mixed like the platform's GPU runs; the goal is an
  estimate/measured ratio within 0.9-1.1.

``--table`` prints, without training, what the callback predicts per GPU for ``qtg_124m`` and
``qtg_356m`` (micro-batch 8 x 512, bf16-mixed, AdamW) at world size 1, 8 and 64 under DDP and FSDP,
with and without activation checkpointing. The last line is the headline figure.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from experiments import REPO_ROOT
from experiments.bench import common
from lhp.errors import UserError, entry_point

GB = 2**30
ARCHS = ("gpt", "qtg", "indra")
# Sizes: (arch_config, micro-batch, sequence). 124m is qtg_124m's shape (conf/model/qtg_124m.yaml)
# for every architecture; indra's embedding width equals its backbone's there.
SIZES: dict[str, tuple[dict[str, Any], int, int]] = {
    "tiny": (dict(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=64), 4, 64),
    "small": (dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384), 8, 256),
    "124m": (dict(vocab_size=50257, block_size=512, n_layer=12, n_head=12, n_embd=768,
                  dropout=0.1), 4, 512),
    "356m": (dict(vocab_size=50257, block_size=512, n_layer=24, n_head=16, n_embd=1024,
                  dropout=0.1), 8, 512),
}
TABLE_MODELS = ("qtg_124m", "qtg_356m")
TABLE_WORLDS = (1, 8, 64)


def arch_config(arch: str, size: str, **extra: Any) -> dict[str, Any]:
    """The config values of ``arch`` at ``size`` (indra: ``d_model`` = ``n_embd``)."""
    values = dict(SIZES[size][0])
    if arch == "indra":
        values["d_model"] = values["n_embd"]
    return {**values, **extra}


def train_peak(arch: str, values: dict[str, Any], batch: int, seq: int, precision: str,
               device: torch.device, steps: int = 3) -> tuple[int, int]:
    """(measured peak bytes, estimated bytes) of ``steps`` training steps of a fresh network.

    The peak is CUDA's ``max_memory_allocated`` above the allocation before the build, or on CPU
    the peak RSS above the RSS before the build (run it in a fresh process: ``cpu_probe``)."""
    from callbacks.vram_budget import estimate_memory, measured_peak_bytes, reset_cpu_peak
    from lit_models.archs import build_arch
    from lit_models.optim import build_optimizer

    torch.manual_seed(0)
    tokens = torch.randint(0, values["vocab_size"], (batch, seq + 1), device=device)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = reset_cpu_peak() or 0
    net = build_arch(arch, values).to(device)
    net.train()
    opt = build_optimizer(net, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
    mixed = precision.endswith("-mixed")
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
            logits, aux = net(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            loss = loss + sum((0.01 * term for term in aux.values()), torch.zeros((), device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del logits, loss, aux
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    peak = measured_peak_bytes(device) - base
    estimate = estimate_memory(net, batch, seq, precision, opt, device=device.type).total
    del net, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return int(peak), int(estimate)


def _probe_child(conn: Any, args: tuple, fixed_mmap: bool) -> None:
    try:
        if fixed_mmap:  # M_MMAP_THRESHOLD = 128 KiB: glibc's initial value, never raised
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)
        conn.send(train_peak(*args[:4], "32-true", torch.device("cpu"), args[4]))
    except BaseException as err:  # noqa: BLE001 - reported by the parent
        conn.send(err)
    finally:
        conn.close()


def cpu_probe(arch: str, values: dict[str, Any], batch: int, seq: int, steps: int,
              fixed_mmap: bool = False) -> tuple[int, int]:
    """``train_peak`` on CPU (fp32) in a forked child process: its peak RSS is its own, and no
    earlier run's freed memory hides in its allocator (the fork costs no new imports).

    ``fixed_mmap``: the child keeps glibc's mmap threshold at its initial 128 KiB instead of
    raising it after each large free (glibc's default), so a freed tensor leaves the RSS at once
    as it leaves CUDA's allocated bytes; the estimate is the same either way."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe_child, args=(child, (arch, values, batch, seq, steps), fixed_mmap))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = RuntimeError(f"vram probe {arch} died (exit code {proc.join() or proc.exitcode}; "
                              "out of memory?)")
    proc.join()
    if isinstance(result, BaseException):
        raise RuntimeError(f"vram probe {arch} {values} failed: {result!r}") from result
    return result


def gpu_checks(device: torch.device, tiny: bool) -> Iterator[tuple[str, float, str]]:
    """Estimate/measured figures for the GPU suite, yielded as they arrive: (name, value, unit).

    On CUDA: gpt, qtg and indra at the small and the 124M size (bf16-mixed, 124M at micro-batch
    4 x 512), then QTG-124M at 512 x 8 (the seed's target: < 7 GB) and qtg_356m with activation
    checkpointing at 512 x 8. ``tiny`` (CI, any device): the tiny size only, fp32 on CPU.
    """
    on_cuda = device.type == "cuda"
    precision = "bf16-mixed" if on_cuda else "32-true"
    runs = [(arch, size, {}, None) for size in (("tiny",) if tiny else ("small", "124m"))
            for arch in ARCHS]
    if not tiny:
        runs += [("qtg", "124m", {}, 8), ("qtg", "356m", {"activation_checkpointing": True}, 8)]
    for arch, size, extra, batch in runs:
        values = arch_config(arch, size, **extra)
        b, s = batch or SIZES[size][1], SIZES[size][2]
        if on_cuda:
            peak, estimate = train_peak(arch, values, b, s, precision, device)
        else:
            peak, estimate = cpu_probe(arch, values, b, s, steps=2)
        name = f"vram/{arch}_{size}{'_ckpt' if extra else ''}_b{b}x{s}"
        yield f"{name}_peak", peak / GB, "GB"
        yield f"{name}_estimate_over_measured", estimate / peak, "x"


def model_values(name: str) -> dict[str, Any]:
    """arch_config of ``conf/model/<name>.yaml`` over its parent's (qtg.yaml, gpt.yaml), with the
    sizes that file sets (vocabulary, context); the data-dependent keys are not needed."""
    from omegaconf import OmegaConf

    values: dict[str, Any] = {}
    arch = None
    chain, current = [], name
    while current:
        path = REPO_ROOT / "conf" / "model" / f"{current}.yaml"
        if not path.is_file():
            raise UserError(f"conf/model/{current}.yaml not found (table model {name!r})")
        cfg = OmegaConf.load(path)
        chain.append(cfg)
        parents = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        current = parents[0] if parents else None
    for cfg in reversed(chain):
        arch = cfg.get("arch", arch)
        section = OmegaConf.to_container(cfg.arch_config, resolve=False) if "arch_config" in cfg else {}
        for key, value in section.items():
            if not (isinstance(value, str) and value.startswith("${")):
                values[key] = value
    return {"arch": arch, **{k: v for k, v in values.items() if v is not None}}


def memory_table(batch: int = 8, seq: int = 512, precision: str = "bf16-mixed") -> list[dict]:
    """Rows of the per-GPU prediction for TABLE_MODELS x checkpointing x strategy x world."""
    from callbacks.vram_budget import estimate_bytes

    rows = []
    for model in TABLE_MODELS:
        values = model_values(model)
        arch = values.pop("arch")
        for ckpt in (False, True):
            for strategy in ("DDP", "FSDP"):
                row: dict[str, Any] = {"model": model, "checkpointing": "on" if ckpt else "off",
                                       "strategy": strategy}
                for world in TABLE_WORLDS:
                    est = estimate_bytes(arch, {**values, "activation_checkpointing": ckpt}, batch,
                                         seq, precision, world, sharded=strategy == "FSDP")
                    row[f"w{world}"] = est.total / GB
                rows.append(row)
    return rows


@entry_point
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = common.bench_parser(__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny size only (seconds; CI)")
    parser.add_argument("--sizes", default="small,124m",
                        help=f"comma-separated sizes of {sorted(SIZES)} (124m: micro-batch 4 x 512)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--table", action="store_true",
                        help="print the per-GPU prediction table for the docs and stop")
    args = common.parse_args(parser, argv)
    if args.table:
        rows = memory_table()
        columns = [("model", "model", ""), ("checkpointing", "activation checkpointing", ""),
                   ("strategy", "strategy", "")] + [
            (f"w{w}", f"{w} GPU{'s' if w > 1 else ''} (GB per GPU)", ".2f") for w in TABLE_WORLDS]
        q = {(r["model"], r["checkpointing"], r["strategy"]): r for r in rows}
        common.report(rows, "vram_estimate --table: qtg_124m at 512 x 8 bf16-mixed, FSDP x64 "
                      f"{q[('qtg_124m', 'off', 'FSDP')]['w64']:.2f} GB per GPU vs DDP "
                      f"{q[('qtg_124m', 'off', 'DDP')]['w64']:.2f} GB; qtg_356m with checkpointing "
                      f"FSDP x8 {q[('qtg_356m', 'on', 'FSDP')]['w8']:.2f} GB",
                      args.out, columns=columns,
                      notes=["micro-batch 8 x 512 tokens per GPU, bf16-mixed, AdamW, CUDA "
                             "(foreach optimizer step, 512-byte allocator rounding); GB = GiB"])
        return rows
    sizes = ["tiny"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise UserError(f"--sizes: unknown {unknown}; choose from {sorted(SIZES)}")
    steps = 2 if args.quick else args.steps
    rows = []
    for size in sizes:
        for arch in common.progress(ARCHS, f"vram {size}"):
            _, batch, seq = SIZES[size]
            peak, estimate = cpu_probe(arch, arch_config(arch, size), batch, seq, steps)
            fixed, _ = cpu_probe(arch, arch_config(arch, size), batch, seq, steps, fixed_mmap=True)
            rows.append({"arch": arch, "size": size, "batch": batch, "seq": seq,
                         "estimate_gb": estimate / GB, "measured_gb": peak / GB,
                         "ratio": estimate / peak, "fixed_gb": fixed / GB,
                         "fixed_ratio": estimate / fixed})
    last = [r for r in rows if r["size"] == sizes[-1]]
    common.report(rows, f"vram_estimate (CPU, fp32, {steps} steps): estimate/measured at "
                  f"{sizes[-1]} " + ", ".join(f"{r['arch']} {r['ratio']:.2f}" for r in last)
                  + "; with glibc's mmap threshold fixed " + ", ".join(
                      f"{r['arch']} {r['fixed_ratio']:.2f}" for r in last)
                  + " (goal on CUDA: 0.9-1.1)", args.out,
                  columns=[("arch", "arch", ""), ("size", "size", ""), ("batch", "micro-batch", "d"),
                           ("seq", "seq", "d"), ("estimate_gb", "estimate GB", ".3f"),
                           ("measured_gb", "measured GB", ".3f"), ("ratio", "estimate/measured", ".2f"),
                           ("fixed_gb", "measured, fixed mmap threshold GB", ".3f"),
                           ("fixed_ratio", "estimate/measured (fixed)", ".2f")],
                  notes=["measured: peak RSS above the RSS before the network was built, one "
                         "forked process per run; 'fixed': glibc's mmap threshold kept at 128 KiB "
                         "(freed tensors leave the RSS at once); GB = GiB"])
    return rows


if __name__ == "__main__":
    main()
