"""H2Q tools: quaternion-structure a checkpoint into the SQLite weight store, and inspect it.

    lhp h2q structure  <ckpt> <out.db> [--dir-bits 12 --norm-bits 4 | --raw]
    lhp h2q load-layer <db> <layer> [--out layer.safetensors]
    lhp h2q analyse    <ckpt|db|safetensors> [--layer NAME] [--json]
    lhp h2q validate   <ckpt|db|safetensors> [--layer NAME] [--dir-bits ...]
    lhp h2q stats      <db>
    lhp h2q verify     <db>
    lhp h2q export     <db> <out.safetensors>

(``python -m experiments.h2q ...`` is the same.) A checkpoint is any file
``lit_models.checkpoints.load_checkpoint`` reads (torch.save or SQLite CheckpointIO files); its
``state_dict`` is used. ``analyse`` prints the fingerprints of
``lit_models.compression.fingerprints`` (spectrum, norms, S^3 statistics; no knot polynomials,
see that module). ``validate`` checks the exact round trips and reports the codec's error.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from lhp.errors import UserError, entry_point
from lit_models.checkpoints import read_state_dict
from lit_models.compression.fingerprints import fingerprint
from lit_models.compression.quaternion import QuaternionCodec
from lit_models.compression.store import WeightStore
from lit_models.compression.structurizer import QuaternionStructurizer


def _select(state: dict[str, torch.Tensor], layer: str | None, source: str) -> dict[str, torch.Tensor]:
    if layer is None:
        return {k: v for k, v in state.items() if v.is_floating_point()}
    if layer not in state:
        raise UserError(f"{source}: no layer {layer!r}; it has {len(state)}, e.g. {sorted(state)[:5]}")
    return {layer: state[layer]}


def _codec(args: argparse.Namespace) -> QuaternionCodec:
    return QuaternionCodec(dir_bits=args.dir_bits, norm_bits=args.norm_bits, codebook=args.codebook)


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f} MB"


def cmd_structure(args: argparse.Namespace) -> dict[str, Any]:
    state = read_state_dict(args.source)
    structurizer = QuaternionStructurizer(_codec(args), fingerprints=not args.no_fingerprints)
    with WeightStore(args.db, "a", chunk_bytes=args.chunk_bytes) as store:
        summary = structurizer.structure_state_dict(state, store, compress=not args.raw)
        file_bytes = store.stats()["file_bytes"]
    compressed = {k: v for k, v in summary["layers"].items() if v["codec"] == "quaternion"}
    for name, info in summary["layers"].items():
        err = f"rel. error {info['rel_error']:.4f}" if "rel_error" in info else ""
        print(f"{name:48s} {info['codec']:10s} {_mb(info['stored_bytes']):>12s} {err}")
    print(f"aliases (tied, stored once): {summary['aliases']}")
    print(f"{len(compressed)} of {len(summary['layers'])} layers quaternion-coded; logical "
          f"{_mb(summary['logical_bytes'])}, stored {_mb(summary['stored_bytes'])}, "
          f"database file {_mb(file_bytes)} ({summary['logical_bytes'] / file_bytes:.2f}x)")
    return summary


def cmd_load_layer(args: argparse.Namespace) -> torch.Tensor:
    with WeightStore(args.db, "r") as store:
        info = store.info(args.layer)
        tensor = store.load(args.layer)
    values = (f"; mean {tensor.double().mean():.6g} std {tensor.double().std():.6g}"
              if tensor.numel() > 1 and tensor.is_floating_point() else "")
    print(f"{args.layer}: shape {tuple(tensor.shape)} {tensor.dtype}, codec {info.codec or 'raw'}, "
          f"{info.n_chunks} chunks, {info.stored_bytes} stored bytes{values}")
    if args.out:
        from safetensors.torch import save_file

        save_file({args.layer: tensor.contiguous()}, str(args.out))
        print(f"wrote {args.out}")
    return tensor


def cmd_analyse(args: argparse.Namespace) -> dict[str, Any]:
    state = _select(read_state_dict(args.source), args.layer, args.source)
    report = {name: fingerprint(t, name) for name, t in state.items()}
    if args.json:
        print(json.dumps(report, indent=1))
        return report
    print(f"{'layer':44s} {'shape':>14s} {'spec.norm':>9s} {'eff.rank':>8s} {'cond':>9s} "
          f"{'|mean u|':>8s} {'orth.H':>6s} {'KS(S3)':>6s}")
    for name, fp in report.items():
        s, q = fp.get("spectrum", {}), fp.get("quaternion", {})
        print(f"{name:44s} {str(tuple(fp['shape'])):>14s} {s.get('spectral_norm', math.nan):9.3f} "
              f"{s.get('effective_rank', math.nan):8.1f} {s.get('condition_number', math.nan):9.3g} "
              f"{q.get('mean_resultant_length', math.nan):8.4f} {q.get('orthant_entropy', math.nan):6.3f} "
              f"{q.get('ks_first_component_vs_haar', math.nan):6.3f}")
    return report


def cmd_validate(args: argparse.Namespace) -> list[dict[str, Any]]:
    state = _select(read_state_dict(args.source), args.layer, args.source)
    structurizer = QuaternionStructurizer(_codec(args))
    reports = [structurizer.validate(t, name) for name, t in state.items()]
    ok = all(r["polar_exact"] and r["su2_norms_preserved"] for r in reports)
    for r in reports:
        codec = (f"codec {r['codec_bits_per_weight']:.2f} bits/weight, rel. error "
                 f"{r['codec_rel_error']:.4f} (SNR {r['codec_snr_db']:.1f} dB)"
                 if "codec_rel_error" in r else "not coded (vector or small)")
        print(f"{r['name']:48s} polar exact={r['polar_exact']} SU(2) exact={r['su2_exact']} "
              f"(max err {r['su2_max_abs_error']:.1e}); {codec}")
    print(f"{'all' if ok else 'NOT all'} polar round trips exact and SU(2) rotations norm-preserving "
          f"over {len(reports)} tensors")
    if not ok:
        raise SystemExit(1)
    return reports


def cmd_stats(args: argparse.Namespace) -> dict[str, Any]:
    with WeightStore(args.db, "r") as store:
        stats = store.stats()
    print(json.dumps(stats, indent=1))
    return stats


def cmd_verify(args: argparse.Namespace) -> int:
    with WeightStore(args.db, "r") as store:
        n = store.verify()
    print(f"{args.db}: all {n} chunks pass their {store.checksum} check")
    return n


def cmd_export(args: argparse.Namespace) -> Path:
    with WeightStore(args.db, "r") as store:
        out = store.export_safetensors(args.out)
    print(f"wrote {out} ({_mb(out.stat().st_size)})")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def codec_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir-bits", type=int, default=12, help="bits per direction code (S^3)")
        p.add_argument("--norm-bits", type=int, default=4, help="bits per gain code")
        p.add_argument("--codebook", choices=("shared", "tensor"), default="shared")

    p = sub.add_parser("structure", help="quaternion-code a checkpoint into a weight store")
    p.add_argument("source")
    p.add_argument("db")
    codec_args(p)
    p.add_argument("--raw", action="store_true", help="store every tensor raw (no compression)")
    p.add_argument("--no-fingerprints", action="store_true")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20)
    p.set_defaults(fn=cmd_structure)
    p = sub.add_parser("load-layer", help="load one layer back (decoded)")
    p.add_argument("db")
    p.add_argument("layer")
    p.add_argument("--out", type=Path, help="also write it to a safetensors file")
    p.set_defaults(fn=cmd_load_layer)
    p = sub.add_parser("analyse", help="fingerprints of every (or one) tensor")
    p.add_argument("source")
    p.add_argument("--layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_analyse)
    p = sub.add_parser("validate", help="exact round trips and codec error per tensor")
    p.add_argument("source")
    p.add_argument("--layer")
    codec_args(p)
    p.set_defaults(fn=cmd_validate)
    for name, fn, text in (("stats", cmd_stats, "database statistics"),
                           ("verify", cmd_verify, "check every chunk's checksum")):
        p = sub.add_parser(name, help=text)
        p.add_argument("db")
        p.set_defaults(fn=fn)
    p = sub.add_parser("export", help="decode every layer into a safetensors file")
    p.add_argument("db")
    p.add_argument("out", type=Path)
    p.set_defaults(fn=cmd_export)
    return parser


@entry_point
def main(argv: list[str] | None = None) -> Any:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    main()
