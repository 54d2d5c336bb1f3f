"""The write-up's ``H2QWeightStructurizer`` API in our names, on the quaternion codec and the store.

    s = QuaternionStructurizer(QuaternionCodec(dir_bits=12, norm_bits=4))
    summary = s.structure_state_dict(state_dict, store)     # compress_and_structure_weights
    w = s.load_layer(store, "net.blocks.0.mlp.fc.weight")   # load_structured_weights
    s.analyse(w); s.validate(w); store.stats()              # analyze / validate / db stats

Which tensors are compressed: floating-point tensors with at least 2 dims and ``min_numel``
elements (the weight matrices and embeddings); vectors (biases, norms) are stored raw, as every
compressor in the size-vs-quality benchmark does too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lit_models.compression.codecs import decode
from lit_models.compression.fingerprints import fingerprint
from lit_models.compression.quaternion import (
    QuaternionCodec,
    from_polar,
    random_unit_quaternion,
    rotate,
    to_polar,
    unrotate,
)
from lit_models.compression.store import WeightStore


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(b.to(torch.float64).norm())
    num = float((a.to(torch.float64) - b.to(torch.float64)).norm())
    return num / den if den > 0 else num


@dataclass
class QuaternionStructurizer:
    codec: QuaternionCodec = field(default_factory=QuaternionCodec)
    min_numel: int = 1024
    fingerprints: bool = True

    def compresses(self, tensor: torch.Tensor) -> bool:
        return (tensor.is_floating_point() and tensor.dim() >= 2
                and tensor.numel() >= self.min_numel)

    def structure_state_dict(self, state_dict: Mapping[str, torch.Tensor], store: WeightStore,
                             compress: bool = True) -> dict[str, Any]:
        """Write every tensor to ``store`` in one transaction (compressed where eligible).

        Returns a summary: layers compressed/raw, logical and stored bytes, per-layer errors.
        """
        layers: dict[str, dict[str, Any]] = {}

        def put(name: str, tensor: torch.Tensor) -> None:
            inv = (fingerprint(tensor, name)
                   if self.fingerprints and tensor.is_floating_point() else None)
            if compress and self.compresses(tensor):
                enc = self.codec.encode(tensor, name)
                store.put_encoded(name, enc, inv)
                layers[name] = {"codec": "quaternion", "stored_bytes": enc.nbytes,
                                "rel_error": _rel_error(decode(enc), tensor)}
            else:
                store.put(name, tensor, inv)
                layers[name] = {"codec": "raw",
                                "stored_bytes": tensor.numel() * tensor.element_size()}

        aliases = store.put_state_dict(state_dict, put)
        logical = sum(math.prod(t.shape) * t.element_size() for n, t in state_dict.items()
                      if n not in aliases)
        return {"layers": layers, "aliases": aliases, "logical_bytes": logical,
                "stored_bytes": store.stats()["stored_bytes"]}

    def load_layer(self, store: WeightStore, name: str) -> torch.Tensor:
        return store.load(name)

    def analyse(self, tensor: torch.Tensor, name: str = "tensor") -> dict[str, Any]:
        return fingerprint(tensor, name)

    def validate(self, tensor: torch.Tensor, name: str = "tensor", seed: int = 0) -> dict[str, Any]:
        """Round trips of one tensor: polar form (exact), an SU(2) rotation (float64-exact) and
        the codec (lossy: relative Frobenius error, SNR, bits per weight)."""
        polar = to_polar(tensor, name)
        back = from_polar(polar)
        gen = torch.Generator().manual_seed(seed)
        left, right = random_unit_quaternion(gen), random_unit_quaternion(gen)
        rotated = rotate(tensor, left, right)
        unrotated = unrotate(rotated, left, right, tensor.shape, tensor.dtype)
        norms_kept = torch.allclose(rotated.norm(dim=-1), polar.norms, rtol=1e-12, atol=1e-300)
        report: dict[str, Any] = {
            "name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype),
            "polar_exact": back.dtype == tensor.dtype and torch.equal(back, tensor),
            "su2_max_abs_error": float((unrotated.double() - tensor.double()).abs().max())
            if tensor.numel() else 0.0,
            "su2_exact": torch.equal(unrotated, tensor), "su2_norms_preserved": bool(norms_kept),
        }
        if self.compresses(tensor):
            enc = self.codec.encode(tensor, name)
            err = _rel_error(decode(enc), tensor)
            report.update({"codec_rel_error": err,
                           "codec_snr_db": -20 * math.log10(err) if err > 0 else math.inf,
                           "codec_bits_per_weight": 8 * enc.nbytes / tensor.numel()})
        return report
