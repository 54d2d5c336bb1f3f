"""The plain compressors the quaternion codec is measured against, on the same ``Encoded`` footing.

* ``CastCodec``: the tensor in a narrower float dtype (fp16 / bf16).
* ``IntCodec``: symmetric per-output-channel (row) integer quantization at ``bits`` bits
  (int8 stores bytes; fewer bits are bit-packed), one fp16 absmax scale per row.
* ``SVDCodec``: truncated SVD ``W ~ (U_r S_r) V_r^T`` with the two factors in fp16; when the rank
  does not save bytes the tensor is stored in fp16 instead (and the meta says so).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from lit_models.compression.codecs import Encoded, pack_bits, register_codec, unpack_bits
from lit_models.compression.quaternion import matrix_shape


def _dtype_meta(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _restore(m: torch.Tensor, meta: dict) -> torch.Tensor:
    return m.reshape(tuple(meta["shape"])).to(getattr(torch, meta["dtype"]))


@dataclass
class CastCodec:
    dtype: torch.dtype = torch.float16

    def encode(self, t: torch.Tensor, what: str = "tensor") -> Encoded:
        return Encoded("cast", {"values": t.detach().to(self.dtype)}, _dtype_meta(t))


@register_codec("cast")
def decode_cast(enc: Encoded) -> torch.Tensor:
    return _restore(enc.parts["values"], enc.meta)


@dataclass
class IntCodec:
    bits: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"IntCodec.bits must be an int in [2, 8], got {self.bits!r}")

    def encode(self, t: torch.Tensor, what: str = "tensor") -> Encoded:
        rows, cols = matrix_shape(t.shape)
        m = t.detach().reshape(rows, cols).to(torch.float32)
        qmax = (1 << (self.bits - 1)) - 1
        scales = (m.abs().amax(dim=1) / qmax).to(torch.float16)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = (m / scales.to(torch.float32).unsqueeze(1)).round().clamp(-qmax, qmax).to(torch.int64)
        payload = codes.to(torch.int8) if self.bits == 8 else pack_bits(codes + qmax, self.bits)
        meta = {**_dtype_meta(t), "bits": self.bits, "rows": rows, "cols": cols}
        return Encoded("int", {"codes": payload, "scales": scales}, meta)


@register_codec("int")
def decode_int(enc: Encoded) -> torch.Tensor:
    m, p = enc.meta, enc.parts
    if m["bits"] == 8:
        codes = p["codes"].to(torch.float32)
    else:
        qmax = (1 << (m["bits"] - 1)) - 1
        codes = (unpack_bits(p["codes"], m["bits"], m["rows"] * m["cols"]) - qmax).to(torch.float32)
    values = codes.reshape(m["rows"], m["cols"]) * p["scales"].to(torch.float32).unsqueeze(1)
    return _restore(values, m)


@dataclass
class SVDCodec:
    rank: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"SVDCodec.rank must be a positive int, got {self.rank!r}")

    def encode(self, t: torch.Tensor, what: str = "tensor") -> Encoded:
        rows, cols = matrix_shape(t.shape)
        rank = min(self.rank, rows, cols)
        if rank * (rows + cols) >= rows * cols:  # no saving: keep the matrix (fp16)
            return Encoded("svd", {"dense": t.detach().to(torch.float16)},
                           {**_dtype_meta(t), "rank": None})
        u, s, vh = _svd(t, rows, cols)
        parts = {"us": (u[:, :rank] * s[:rank]).to(torch.float16),
                 "vh": vh[:rank].contiguous().to(torch.float16)}
        return Encoded("svd", parts, {**_dtype_meta(t), "rank": rank})


_SVD_CACHE: dict[int, tuple] = {}


def _svd(t: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, ...]:
    """Thin SVD (float64), cached per live tensor and version: one factorization serves every
    rank of a sweep."""
    hit = _SVD_CACHE.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    factors = torch.linalg.svd(t.detach().reshape(rows, cols).to(torch.float64), full_matrices=False)
    if len(_SVD_CACHE) >= 64:
        _SVD_CACHE.pop(next(iter(_SVD_CACHE)))
    _SVD_CACHE[id(t)] = (weakref.ref(t), t._version, factors)
    return factors


@register_codec("svd")
def decode_svd(enc: Encoded) -> torch.Tensor:
    p = enc.parts
    if "dense" in p:
        return _restore(p["dense"], enc.meta)
    return _restore(p["us"].to(torch.float32) @ p["vh"].to(torch.float32), enc.meta)
