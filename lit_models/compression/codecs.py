"""Codec interface shared by every weight compressor (quaternion VQ, int-k, truncated SVD, fp16).

A codec turns one tensor into an ``Encoded``: named plain tensors (``parts``: packed codes,
scales, codebooks, factors) plus a small JSON-able ``meta``. ``decode`` rebuilds the tensor.
The same ``Encoded`` is written to the SQLite weight store as one byte payload
(``to_payload``/``from_payload``) or to a safetensors file by the size-vs-quality benchmark, so
"bytes on disk" always counts codes, scales, codebooks and headers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# dtype name <-> torch dtype of every tensor the store and payloads may hold (raw little-endian).
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: torch.dtype, where: str = "tensor") -> str:
    if dtype not in DTYPE_NAMES:
        raise TypeError(f"{where}: dtype {dtype} is not supported; expected one of {sorted(DTYPES)}")
    return DTYPE_NAMES[dtype]


def dtype_from_name(name: str, where: str = "tensor") -> torch.dtype:
    if name not in DTYPES:
        raise TypeError(f"{where}: unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a CPU tensor in C order (a view where possible, never pickle)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return memoryview(flat.numpy())


def tensor_from_bytes(buf: bytes | bytearray | memoryview, dtype: torch.dtype,
                      shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``tensor_bytes`` (copies into a fresh, writable tensor)."""
    storage_dtype = torch.uint8 if dtype == torch.bool else dtype
    n = math.prod(shape)
    itemsize = torch.empty((), dtype=storage_dtype).element_size()
    if len(buf) != n * itemsize:
        raise ValueError(f"{len(buf)} bytes cannot hold a {dtype} tensor of shape {tuple(shape)}")
    out = torch.empty(n, dtype=storage_dtype)
    if n:
        out.view(torch.uint8).numpy()[:] = np.frombuffer(buf, dtype=np.uint8)
    out = out.reshape(shape)
    return out.to(torch.bool) if dtype == torch.bool else out


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer codes (< 2**bits) into a dense little-endian bit stream."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    values = codes.reshape(-1).to(torch.int64).numpy()
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits: [{values.min()}, {values.max()}]")
    planes = ((values[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: ``count`` codes as int64."""
    flat = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little")
    planes = flat.reshape(count, bits).astype(np.int64)
    return torch.from_numpy((planes << np.arange(bits, dtype=np.int64)).sum(axis=1))


@dataclass
class Encoded:
    """A compressed tensor: the codec's name, its parts (plain tensors) and JSON-able meta."""

    codec: str
    parts: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the parts (codes, scales, codebooks); headers are counted by the container."""
        return sum(p.numel() * p.element_size() for p in self.parts.values())


Decoder = Callable[[Encoded], torch.Tensor]
CODECS: dict[str, Decoder] = {}


def register_codec(name: str) -> Callable[[Decoder], Decoder]:
    def wrap(fn: Decoder) -> Decoder:
        CODECS[name] = fn
        return fn

    return wrap


def decode(encoded: Encoded) -> torch.Tensor:
    if encoded.codec not in CODECS:
        raise KeyError(f"unknown codec {encoded.codec!r}; registered: {sorted(CODECS)}")
    return CODECS[encoded.codec](encoded)


def to_payload(encoded: Encoded) -> tuple[bytes, dict[str, Any]]:
    """One byte string of all parts + the ``compression_info`` that locates them."""
    table, chunks, offset = [], [], 0
    for name, part in encoded.parts.items():
        raw = tensor_bytes(part)
        table.append({"name": name, "dtype": dtype_name(part.dtype, f"part {name!r}"),
                      "shape": list(part.shape), "offset": offset, "nbytes": raw.nbytes})
        chunks.append(raw)
        offset += raw.nbytes
    info = {"codec": encoded.codec, "meta": encoded.meta, "parts": table}
    json.dumps(info)  # fail here, not at write time, if meta is not JSON-able
    return b"".join(chunks), info


def from_payload(payload: bytes | bytearray | memoryview, info: dict[str, Any]) -> Encoded:
    view = memoryview(payload)
    parts = {}
    for p in info["parts"]:
        buf = view[p["offset"]:p["offset"] + p["nbytes"]]
        parts[p["name"]] = tensor_from_bytes(buf, dtype_from_name(p["dtype"], p["name"]),
                                             tuple(p["shape"]))
    return Encoded(info["codec"], parts, dict(info.get("meta", {})))
