"""Load latency and peak RAM: the SQLite weight store against a safetensors file (mmap).

    lhp bench weight_store [--ckpt PATH] [--repeats 5] [--chunk-bytes N] [--layer NAME]
        [--out report.json]

The trained GPT's state dict (tied embedding once) is written once as ``model.safetensors``, as
``model.db`` (raw chunks, xxh3-128 checksums, the default) and as ``model-sha256.db`` (SHA-256,
the algorithm of schema-1 stores: the checksum's share of a verified full load). Each
measurement runs in a fresh Python process (torch already imported, the peak-RSS counter reset
just before the load), so peak RAM is the load's own: ``VmHWM`` after minus ``VmRSS`` before.
Files are in the page cache (one unmeasured warm-up read each), i.e. this compares the formats,
not the disk. Every loaded page is read once (one element per KiB), so safetensors' lazily mapped
tensors are really loaded. Variants alternate across repeats; medians are reported.

Besides the store's full load (verified; ``lazy=True``, each layer read and verified at its first
access; unverified) it times ``safetensors_copied``: safetensors' load followed by a copy of every
tensor into fresh memory, the least any loader that fills its own tensors (rather than mapping
the file) can cost, which shows how much of the store's time is the memory it writes.
Goals (issue 20): full verified load <= 3x safetensors' latency, one layer far cheaper than a
full load, peak RAM <= 1.2x safetensors'. The last line is the figure.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from experiments import REPO_ROOT
from experiments.bench import common
from lhp.errors import UserError, entry_point
from lit_models.compression.store import WeightStore, storage_key

PROBE = r"""
import json, sys, time
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from lit_models.compression.store import WeightStore

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

variant, path, layer = sys.argv[1], sys.argv[2], sys.argv[3]
with open("/proc/self/clear_refs", "w") as fh:   # reset VmHWM to the current RSS
    fh.write("5")
before = status("VmRSS:")
t0 = time.perf_counter()
if variant == "safetensors_full":
    out = load_file(path)
elif variant == "safetensors_copied":
    out = {k: t.clone() for k, t in load_file(path).items()}
elif variant == "safetensors_layer":
    with safe_open(path, framework="pt") as fh:
        out = {layer: fh.get_tensor(layer)}
elif variant.startswith("store_full"):
    store = WeightStore(path, "r", cache_bytes=0)
    out = store.load_state_dict(verify=not variant.endswith("noverify"),
                                lazy=variant.endswith("lazy"))
    if not variant.endswith("lazy"):  # a lazy mapping reads from the open store when touched
        store.close()
elif variant == "store_layer":
    with WeightStore(path, "r", cache_bytes=0) as store:
        out = {layer: store.load(layer)}
# read one element per 1 KiB (every page) so lazily mapped tensors are really loaded
total = sum(float(t.reshape(-1)[::256].double().sum()) for t in out.values())
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_bytes": status("VmHWM:") - before,
                  "bytes": sum(t.numel() * t.element_size() for t in out.values()),
                  "checksum": total}))
"""
VARIANTS = ("safetensors_full", "safetensors_copied", "store_full", "store_full_lazy",
            "store_full_sha256", "store_full_noverify", "safetensors_layer", "store_layer")


def probe(variant: str, path: Path, layer: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PROBE, variant, str(path), layer], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"{variant} probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unique_state(ckpt: Path) -> dict[str, torch.Tensor]:
    from lit_models.checkpoints import read_state_dict

    seen, out = set(), {}
    for k, v in read_state_dict(ckpt).items():
        if storage_key(v) not in seen:  # tied tensors once (safetensors refuses shared memory)
            seen.add(storage_key(v))
            out[k] = v.contiguous()
    return out


@entry_point
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.bench_parser(__doc__.split("\n")[0], repeats=5)
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--chunk-bytes", type=int, default=4 << 20)
    parser.add_argument("--layer", default=None, help="layer of the one-layer load (default: an MLP matrix)")
    args = common.parse_args(parser, argv)
    ckpt = args.ckpt or common.default_checkpoint()
    if not ckpt.is_file():
        raise UserError(f"--ckpt {ckpt}: no such checkpoint file")
    from safetensors.torch import save_file

    state = unique_state(ckpt)
    layer = args.layer or next((k for k in state if k.endswith("mlp.fc.weight")), max(
        state, key=lambda k: state[k].numel()))
    if layer not in state:
        raise UserError(f"--layer {layer!r} is not in {ckpt}; e.g. {sorted(state)[:5]}")
    with tempfile.TemporaryDirectory(prefix="h2q_store_bench-") as tmp:
        paths = {"safetensors": Path(tmp) / "model.safetensors", "store": Path(tmp) / "model.db",
                 "store_sha256": Path(tmp) / "model-sha256.db"}
        save_file(state, str(paths["safetensors"]))
        for key, checksum in (("store", "xxh3_128"), ("store_sha256", "sha256")):
            with WeightStore(paths[key], "a", chunk_bytes=args.chunk_bytes, journal="delete",
                             checksum=checksum) as store:
                store.put_state_dict(state)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        file_of = {v: paths["store_sha256" if v.endswith("sha256") else v.split("_")[0]] for v in VARIANTS}
        results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for variant in VARIANTS:  # warm-up: page cache and first-import costs
            probe(variant, file_of[variant], layer)
        for i in common.progress(range(args.repeats), "weight store repeats"):
            for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
                results[variant].append(probe(variant, file_of[variant], layer))
    med = {v: {"ms": 1e3 * statistics.median(r["seconds"] for r in rs),
               "peak_mb": statistics.median(r["peak_bytes"] for r in rs) / 1e6,
               "mb": rs[0]["bytes"] / 1e6} for v, rs in results.items()}
    n_params = sum(t.numel() for t in state.values())
    full, sf, sha = med["store_full"], med["safetensors_full"], med["store_full_sha256"]
    figure = {
        "full_latency_ratio": full["ms"] / sf["ms"], "full_peak_ratio": full["peak_mb"] / sf["peak_mb"],
        "vs_copied_ratio": full["ms"] / med["safetensors_copied"]["ms"],
        "layer_vs_full": full["ms"] / med["store_layer"]["ms"], "sha256_vs_xxh3": sha["ms"] / full["ms"],
        "sizes": sizes, "medians": med,
    }
    common.report([{"variant": v, **m} for v, m in med.items()],
                  f"weight_store: full load {full['ms']:.1f} ms vs safetensors {sf['ms']:.1f} ms "
                  f"(x{figure['full_latency_ratio']:.2f}, goal <= 3; x{figure['vs_copied_ratio']:.2f} safetensors "
                  f"copied into fresh memory); one layer {med['store_layer']['ms']:.1f} ms "
                  f"({figure['layer_vs_full']:.0f}x cheaper than the full load); peak RAM {full['peak_mb']:.1f} MB "
                  f"vs {sf['peak_mb']:.1f} MB (x{figure['full_peak_ratio']:.2f}, goal <= 1.2); verified with "
                  f"SHA-256 instead of xxh3-128 {sha['ms']:.1f} ms (x{figure['sha256_vs_xxh3']:.2f}), "
                  f"unverified {med['store_full_noverify']['ms']:.1f} ms", args.out,
                  columns=[("variant", "variant", ""), ("mb", "loaded MB", ".2f"), ("ms", "latency ms", ".1f"),
                           ("peak_mb", "peak RAM MB", ".1f")],
                  notes=[f"checkpoint {ckpt}: {len(state)} tensors, {n_params / 1e6:.2f}M parameters; "
                         f"safetensors file {sizes['safetensors'] / 1e6:.2f} MB, store file "
                         f"{sizes['store'] / 1e6:.2f} MB (chunks of {args.chunk_bytes} bytes); one layer = "
                         f"{layer}; median of {args.repeats}"],
                  meta={k: v for k, v in figure.items() if k != "medians"})
    return figure


if __name__ == "__main__":
    main()
