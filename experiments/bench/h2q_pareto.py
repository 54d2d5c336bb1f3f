"""Size against quality: WikiText-2 validation word-level perplexity against bytes on disk.

    lhp bench h2q_pareto [--ckpt PATH] [--phm-ckpt PATH]
        [--methods fp32,fp16,int8,...] [--limit-val-batches N] [--out results.json]

Every variant of the trained GPT is written to a safetensors file (codes, scales, codebooks,
SVD factors, the uncompressed vectors, the header: everything) and read back from it before it
is evaluated, so "bytes" is the size of a real file and the model evaluated is what that file
holds. Tied tensors (input/output embeddings) are stored once; a codebook shared by all tensors
is stored once. Matrices and embeddings (>= 2 dims, >= 1024 elements) are compressed, vectors
(biases, LayerNorms) are kept in fp16 (fp32 in the fp32 row), the same for every method.

Methods: ``fp32``, ``fp16``; ``int<k>`` (symmetric per-row, k = 8, 4, 3); ``svd<r>`` (truncated
SVD at rank r, fp16 factors); ``quat<d>+<g>`` (quaternion gain-shape coding with d direction
bits and g gain bits per group of 4 weights, shared codebook). The PHM (n = 4) model trained
from scratch (``experiment=gpt_wikitext2_phm``) is evaluated with ``--phm-methods`` (default
fp32, fp16, int8, int4: the same codecs on its own weights) when its checkpoint is given with
``--phm-ckpt``; otherwise its rows say "not run".

Evaluation is the platform's own (``LanguageModel`` validation: ``val/wiki_word_ppl``), on the
data config and tokenizer stored in the checkpoint; ``--limit-val-batches`` evaluates the first
N batches only (word counts pro rata, as the platform does). The last line is the figure.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from experiments.bench import common
from lhp.errors import UserError, entry_point
from lit_models.checkpoints import (
    build_stored_datamodule,
    load_checkpoint,
    load_module,
    platform_meta,
)
from lit_models.compression.baselines import CastCodec, IntCodec, SVDCodec
from lit_models.compression.codecs import Encoded, decode
from lit_models.compression.quaternion import QuaternionCodec
from lit_models.compression.store import storage_key

DEFAULT_METHODS = ("fp32,fp16,int8,int4,int3,svd128,svd64,svd16,svd12,"
                   "quat12+4,quat10+6,quat8+4,quat6+2,quat2+1")
MIN_NUMEL = 1024
COLUMNS = [("model", "model", ""), ("method", "method", ""), ("mb", "MB", ".3f"),
           ("vs_fp32", "vs fp32", ".1f"), ("bits_per_param", "bits/param", ".2f"),
           ("word_ppl", "word ppl", ".2f"), ("seconds", "s", ".0f"), ("note", "note", "")]


def codec_for(method: str) -> tuple[Callable[[torch.Tensor, str], Encoded] | None, torch.dtype]:
    """(encoder for matrices or None, dtype of everything else) of a method name."""
    if method == "fp32":
        return None, torch.float32
    if method == "fp16":
        return CastCodec(torch.float16).encode, torch.float16
    if method.startswith("int"):
        return IntCodec(int(method[3:])).encode, torch.float16
    if method.startswith("svd"):
        return SVDCodec(int(method[3:])).encode, torch.float16
    if method.startswith("quat"):
        dir_bits, norm_bits = (int(b) for b in method[4:].split("+"))
        return QuaternionCodec(dir_bits, norm_bits).encode, torch.float16
    raise UserError(f"unknown method {method!r}; expected fp32, fp16, int<k>, svd<r>, quat<d>+<g>")


def write_variant(state: dict[str, torch.Tensor], method: str, path: Path) -> dict[str, Any]:
    """Compress ``state`` with ``method`` into one safetensors file; returns what it holds."""
    from safetensors.torch import save_file

    encode, rest_dtype = codec_for(method)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = storage_key(t)
        if key in seen:
            layers[name] = {"alias": seen[key]}
            continue
        seen[key] = name
        if encode is not None and t.is_floating_point() and t.dim() >= 2 and t.numel() >= MIN_NUMEL:
            enc = encode(t, name)
            shared = enc.meta.get("shared", {})
            for part, value in enc.parts.items():
                slot = f"__shared__/{shared[part]}" if part in shared else f"{name}/{part}"
                tensors.setdefault(slot, value.contiguous())
            layers[name] = {"codec": enc.codec, "meta": enc.meta, "parts": {
                p: (f"__shared__/{shared[p]}" if p in shared else f"{name}/{p}") for p in enc.parts}}
        else:
            value = t.to(rest_dtype) if t.is_floating_point() else t
            tensors[f"{name}/raw"] = value.contiguous()
            layers[name] = {"raw": f"{name}/raw", "dtype": str(t.dtype).removeprefix("torch.")}
    save_file(tensors, str(path), metadata={"layers": json.dumps(layers)})
    return layers


def read_variant(path: Path) -> dict[str, torch.Tensor]:
    """Decode a file written by ``write_variant`` back into a full-precision state dict."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        layers = json.loads(fh.metadata()["layers"])
        out: dict[str, torch.Tensor] = {}
        for name, spec in layers.items():
            if "raw" in spec:
                out[name] = fh.get_tensor(spec["raw"]).to(getattr(torch, spec["dtype"]))
            elif "codec" in spec:
                parts = {p: fh.get_tensor(slot) for p, slot in spec["parts"].items()}
                out[name] = decode(Encoded(spec["codec"], parts, spec["meta"]))
    for name, spec in layers.items():
        if "alias" in spec:
            out[name] = out[spec["alias"]]
    return out


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a state dict that keeps tied tensors tied (one clone per shared storage)."""
    clones: dict[tuple, torch.Tensor] = {}
    return {k: clones.setdefault(storage_key(v), v.clone()) for k, v in state.items()}


class Evaluator:
    """The platform's validation of one checkpoint's model, data and tokenizer, reusable."""

    def __init__(self, ckpt_path: Path, limit_val_batches: int | None) -> None:
        ckpt = load_checkpoint(ckpt_path)
        meta = platform_meta(ckpt, ckpt_path)
        self.datamodule = build_stored_datamodule({**meta["config"]["data"], "tokenizer": meta["tokenizer"]},
                                                  ckpt_path)
        self.module = load_module(ckpt, meta, ckpt_path)
        self.state = clone_state(self.module.state_dict())
        self.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False,
                                 limit_val_batches=limit_val_batches)
        self.n_params = sum(p.numel() for p in self.module.net.parameters())

    def word_ppl(self, state: dict[str, torch.Tensor] | None = None) -> float:
        if state is not None:
            self.module.load_state_dict(state, strict=True)
        result = self.trainer.validate(self.module, datamodule=self.datamodule, verbose=False)[0]
        key = next((k for k in ("val/wiki_word_ppl", "val/word_ppl") if k in result), None)
        if key is None:
            raise KeyError(f"no word-level perplexity in {sorted(result)}: the checkpoint's data "
                           "config must be tokenized WikiText (data.wiki.word_level=true)")
        return float(result[key])


def run(ckpt: Path, methods: list[str], limit: int | None, phm_ckpt: Path | None,
        workdir: Path, compress_threads: int | None = None,
        phm_methods: tuple[str, ...] = ("fp32", "fp16")) -> list[dict[str, Any]]:
    ev = Evaluator(ckpt, limit)
    rows = []
    for method in common.progress(methods, "h2q variants"):
        t0 = time.perf_counter()
        path = workdir / f"{method}.safetensors"
        threads = torch.get_num_threads()
        torch.set_num_threads(compress_threads or threads)
        try:
            write_variant(ev.state, method, path)
        finally:
            torch.set_num_threads(threads)
        size = path.stat().st_size
        ppl = ev.word_ppl(read_variant(path))
        rows.append({"model": "gpt", "method": method, "bytes": size, "params": ev.n_params,
                     "bits_per_param": 8 * size / ev.n_params, "word_ppl": ppl,
                     "seconds": time.perf_counter() - t0})
    if phm_ckpt is None or not phm_ckpt.is_file():
        for method in phm_methods:
            rows.append({"model": "phm4", "method": method, "bytes": None, "word_ppl": None,
                         "note": f"not run: no PHM checkpoint ({phm_ckpt or 'pass --phm-ckpt'}); "
                                 "train it with lhp train experiment=gpt_wikitext2_phm"})
        return rows
    phm = Evaluator(phm_ckpt, limit)
    for method in common.progress(phm_methods, "h2q PHM variants"):
        path = workdir / f"phm-{method}.safetensors"
        write_variant(phm.state, method, path)
        rows.append({"model": "phm4", "method": method, "bytes": path.stat().st_size,
                     "params": phm.n_params, "bits_per_param": 8 * path.stat().st_size / phm.n_params,
                     "word_ppl": phm.word_ppl(read_variant(path))})
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Where the quaternion codes sit against int-k and SVD at (nearly) equal bytes."""
    gpt = [r for r in rows if r["model"] == "gpt" and r["bytes"]]
    base = next((r for r in gpt if r["method"] == "fp32"), None)
    quats = [r for r in gpt if r["method"].startswith("quat")]
    parts = []
    for q in sorted(quats, key=lambda r: -r["bytes"]):
        near = [min((r for r in gpt if r["method"].startswith(kind)),
                    key=lambda r: abs(math.log(r["bytes"] / q["bytes"])), default=None)
                for kind in ("int", "svd")]
        versus = " / ".join(f"{r['method']} {r['bytes'] / 1e6:.2f}MB {r['word_ppl']:.1f}"
                            for r in near if r)
        parts.append(f"{q['method']} {q['bytes'] / 1e6:.2f}MB {q['word_ppl']:.1f} vs {versus}")
    head = f"fp32 {base['bytes'] / 1e6:.2f}MB {base['word_ppl']:.1f}; " if base else ""
    return "h2q_pareto (word ppl): " + head + "; ".join(parts)


@entry_point
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = common.bench_parser(__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="trained GPT (default: newest gpt_wikitext2)")
    parser.add_argument("--phm-ckpt", type=Path, default=None, help="trained gpt_wikitext2_phm checkpoint")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--phm-methods", default="fp32,fp16,int8,int4",
                        help="methods applied to the PHM model's own weights")
    parser.add_argument("--limit-val-batches", type=int, default=None,
                        help="evaluate the first N validation batches only (default: all)")
    parser.add_argument("--compress-threads", type=int, default=None,
                        help="torch threads while compressing (1 on a machine busy with other "
                             "jobs: 2 threads on 2 busy cores ran LAPACK SVDs 20-50x slower here)")
    args = common.parse_args(parser, argv)
    ckpt = args.ckpt or common.default_checkpoint()
    if not ckpt.is_file():
        raise UserError(f"--ckpt {ckpt}: no such checkpoint file")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    phm_methods = tuple(m.strip() for m in args.phm_methods.split(",") if m.strip())
    for m in (*methods, *phm_methods):
        codec_for(m)  # fail on a typo before any work
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    with tempfile.TemporaryDirectory(prefix="h2q_pareto-") as tmp:
        rows = run(ckpt, methods, args.limit_val_batches, args.phm_ckpt, Path(tmp),
                   args.compress_threads, phm_methods)
    fp32 = next((r["bytes"] for r in rows if r["method"] == "fp32" and r["bytes"]), None)
    shown = [{**r, "mb": r["bytes"] / 1e6 if r["bytes"] else None,
              "vs_fp32": fp32 / r["bytes"] if fp32 and r["bytes"] else None} for r in rows]
    common.report(shown, summary(rows), args.out, columns=COLUMNS,
                  notes=[f"checkpoint {ckpt}; validation batches: {args.limit_val_batches or 'all'}; "
                         f"threads: {torch.get_num_threads()} (compression: {args.compress_threads or 'same'})"],
                  meta={"checkpoint": str(ckpt), "limit_val_batches": args.limit_val_batches})
    return rows


if __name__ == "__main__":
    main()
