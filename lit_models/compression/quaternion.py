"""Weights as quaternions: polar form on the 3-sphere, SU(2) rotations, gain-shape quantization.

Layout. A tensor is viewed as a matrix ``(rows, cols)`` with ``rows = shape[0]`` (1 for 0-/1-D
tensors); each row is padded with zeros to a multiple of 4 and read as consecutive quaternions
``q = (w, x, y, z)``. So a quaternion never straddles two output channels (rows), and the padding
(``(-cols) % 4`` zeros per row) is dropped again by the inverse map.

Polar form. ``q = r * u`` with ``r = |q|`` and ``u`` a unit quaternion, a point of S^3 (= SU(2));
``u = (1, 0, 0, 0)`` where ``r = 0``. The maps are computed in float64 and cast back, so the round
trip of a float16/bfloat16/float32 tensor is bit-exact (float64 input: to float64 rounding).

SU(2). Unit quaternions ``l, g`` act by ``q -> l q g`` (Hamilton product); the inverse is
``q -> conj(l) q conj(g)``. Norms are invariant, which is why rotations cannot compress anything
on their own; ``exp_map``/``log_map`` connect them to the Lie algebra su(2) (pure quaternions).

Compression (``QuaternionCodec``): gain-shape vector quantization. Directions are replaced by the
nearest of ``2**dir_bits`` codewords on S^3 (spherical k-means: by default one codebook per bit
budget fitted to Haar-uniform directions and shared by all tensors, stored once; or one fitted
per tensor, ~5-15% less angular error for 2 * 4 * 2**dir_bits bytes per tensor), and the gain
``q . c`` (the projection on the chosen codeword, which beats ``|q|`` in squared error) by one of
``2**norm_bits`` levels (1-D k-means on gains divided by a per-row fp16 scale). Cost per weight:
``(dir_bits + norm_bits) / 4`` bits plus the codebooks and row scales, all stored and counted.

The write-up's "Lie transformation enhancement" and sphere "projection network" have no effect on
what is stored (a rotation is invertible and norm-preserving), so only the exact maps are kept.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lit_models.compression.codecs import Encoded, pack_bits, register_codec, unpack_bits

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IDENTITY = (1.0, 0.0, 0.0, 0.0)


def _check_float(t: torch.Tensor, what: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what}: quaternion maps need a float tensor "
                        f"(float16/bfloat16/float32/float64), got {t.dtype}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what}: tensor holds inf/nan; polar form is undefined there")


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def to_quaternions(t: torch.Tensor) -> torch.Tensor:
    """``(rows, ceil(cols / 4), 4)`` float64 quaternions of ``t`` (rows zero-padded)."""
    rows, cols = matrix_shape(t.shape)
    m = t.detach().reshape(rows, cols).to(torch.float64)
    pad = (-cols) % 4
    if pad:
        m = torch.nn.functional.pad(m, (0, pad))
    return m.reshape(rows, (cols + pad) // 4, 4)


def from_quaternions(q: torch.Tensor, shape: torch.Size | tuple[int, ...],
                     dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``to_quaternions``: drop the padding, restore shape and dtype."""
    rows, cols = matrix_shape(torch.Size(shape))
    return q.reshape(rows, q.shape[-2] * 4)[:, :cols].reshape(shape).to(dtype)


@dataclass
class Polar:
    """Polar form of a tensor: ``norms`` (rows, n) and unit ``directions`` (rows, n, 4), float64."""

    norms: torch.Tensor
    directions: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype

    @property
    def quaternions(self) -> torch.Tensor:
        return self.norms.unsqueeze(-1) * self.directions


def to_polar(t: torch.Tensor, what: str = "tensor") -> Polar:
    """Norm x unit quaternion for every group of 4 weights (see the module docstring)."""
    _check_float(t, what)
    q = to_quaternions(t)
    norms = q.norm(dim=-1)
    identity = torch.tensor(IDENTITY, dtype=torch.float64)
    directions = torch.where(norms.unsqueeze(-1) > 0, q / norms.clamp_min(1e-300).unsqueeze(-1),
                             identity)
    return Polar(norms, directions, t.shape, t.dtype)


def from_polar(polar: Polar) -> torch.Tensor:
    """Exact inverse of ``to_polar`` (bit-exact for float16/bfloat16/float32)."""
    return from_quaternions(polar.quaternions, polar.shape, polar.dtype)


# ------------------------------------------------------------------------------ SU(2)
def hamilton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of quaternions ``(..., 4)`` (broadcasting), ``(w, x, y, z)`` order."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack((
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ), dim=-1)


def conjugate(q: torch.Tensor) -> torch.Tensor:
    return q * torch.tensor((1.0, -1.0, -1.0, -1.0), dtype=q.dtype, device=q.device)


def exp_map(v: torch.Tensor) -> torch.Tensor:
    """su(2) -> SU(2): a rotation vector ``(..., 3)`` to the unit quaternion ``exp(v)``."""
    v = v.to(torch.float64)
    angle = v.norm(dim=-1, keepdim=True)
    scale = torch.where(angle > 0, torch.sin(angle) / angle.clamp_min(1e-300), torch.ones_like(angle))
    return torch.cat((torch.cos(angle), scale * v), dim=-1)


def log_map(u: torch.Tensor) -> torch.Tensor:
    """SU(2) -> su(2): inverse of ``exp_map`` for rotation angles in [0, pi]."""
    u = u.to(torch.float64)
    vec = u[..., 1:]
    s = vec.norm(dim=-1, keepdim=True)
    angle = torch.atan2(s, u[..., :1])
    return torch.where(s > 0, vec * angle / s.clamp_min(1e-300), torch.zeros_like(vec))


def random_unit_quaternion(generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-uniform element of SU(2) (normalized Gaussian 4-vector)."""
    q = torch.randn(4, dtype=torch.float64, generator=generator)
    return q / q.norm()


def _check_unit(u: torch.Tensor, what: str) -> torch.Tensor:
    u = torch.as_tensor(u, dtype=torch.float64)
    if u.shape[-1:] != (4,) or not torch.allclose(u.norm(dim=-1), torch.ones((), dtype=u.dtype), atol=1e-9):
        raise ValueError(f"{what} must be a unit quaternion (..., 4), got shape {tuple(u.shape)} "
                         f"and norm {u.norm(dim=-1).flatten()[:3].tolist()}")
    return u


def rotate(t: torch.Tensor, left: torch.Tensor, right: torch.Tensor | None = None) -> torch.Tensor:
    """Quaternions ``left * q * right`` of ``t``, shape ``(rows, n, 4)`` float64 (padding kept:
    a rotation mixes all four components, so the padded ones must travel with the rest)."""
    _check_float(t, "rotate")
    left = _check_unit(left, "left")
    right = _check_unit(right if right is not None else torch.tensor(IDENTITY), "right")
    return hamilton(hamilton(left, to_quaternions(t)), right)


def unrotate(q: torch.Tensor, left: torch.Tensor, right: torch.Tensor | None,
             shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Undo ``rotate``: ``conj(left) * q * conj(right)``, back to a tensor of ``shape``/``dtype``
    (equal to the original up to float64 rounding, i.e. bit-exact for typical float32 weights)."""
    left = _check_unit(left, "left")
    right = _check_unit(right if right is not None else torch.tensor(IDENTITY), "right")
    return from_quaternions(hamilton(hamilton(conjugate(left), q), conjugate(right)), shape, dtype)


# ------------------------------------------------------------------------ quantization
def _nearest(points: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the codeword with the largest dot product (= smallest angle on S^3)."""
    out = torch.empty(points.shape[0], dtype=torch.int64)
    cb = codebook.t().contiguous()
    for i in range(0, points.shape[0], chunk):
        out[i:i + chunk] = (points[i:i + chunk] @ cb).argmax(dim=1)
    return out


def spherical_kmeans(points: torch.Tensor, k: int, iters: int = 10, sample: int = 65536,
                     seed: int = 0) -> torch.Tensor:
    """``k`` unit codewords on S^3 fitted by Lloyd iterations on a seeded subsample (float32)."""
    gen = torch.Generator().manual_seed(seed)
    pts = points.to(torch.float32)
    if pts.shape[0] > sample:
        pts = pts[torch.randperm(pts.shape[0], generator=gen)[:sample]]
    if pts.shape[0] >= k:
        codebook = pts[torch.randperm(pts.shape[0], generator=gen)[:k]].clone()
    else:  # fewer points than codewords: the points plus random directions
        extra = torch.randn(k - pts.shape[0], 4, generator=gen)
        codebook = torch.cat((pts, extra / extra.norm(dim=1, keepdim=True)))
    for _ in range(iters):
        assign = _nearest(pts, codebook)
        sums = torch.zeros_like(codebook).index_add_(0, assign, pts)
        norms = sums.norm(dim=1, keepdim=True)
        empty = norms.squeeze(1) == 0
        codebook = torch.where(norms > 0, sums / norms.clamp_min(1e-30), codebook)
        if empty.any():  # re-seed empty cells with random sample points
            codebook[empty] = pts[torch.randint(pts.shape[0], (int(empty.sum()),), generator=gen)]
    return codebook


def scalar_kmeans(values: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    """``k`` sorted levels minimizing squared error (Lloyd-Max), initialized at quantiles."""
    v = values.reshape(-1).to(torch.float64)
    if v.numel() == 0:
        return torch.zeros(k, dtype=torch.float64)
    levels = torch.quantile(v[: 1 << 24], torch.linspace(0, 1, k, dtype=torch.float64)).unique()
    for _ in range(iters):
        assign = torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)
        sums = torch.zeros_like(levels).index_add_(0, assign, v)
        counts = torch.zeros_like(levels).index_add_(0, assign, torch.ones_like(v))
        levels = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
    return torch.nn.functional.pad(levels, (0, k - levels.numel()), value=float(levels[-1]))


@functools.lru_cache(maxsize=8)
def shared_codebook(dir_bits: int, seed: int = 0, iters: int = 10) -> torch.Tensor:
    """The codebook for Haar-uniform directions (what i.i.d. weights give), fp16-rounded unit rows.

    Deterministic for a given (dir_bits, seed); it is stored with the weights anyway, once.
    """
    k = 1 << dir_bits
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(max(16 * k, 65536), 4, generator=gen)
    codebook = spherical_kmeans(points / points.norm(dim=1, keepdim=True), k, iters,
                                sample=max(16 * k, 65536), seed=seed)
    return _round_unit(codebook)


def _round_unit(codebook: torch.Tensor) -> torch.Tensor:
    """fp16 codewords (as stored), renormalized in float32 the same way at encode and decode."""
    cb = codebook.to(torch.float16).to(torch.float32)
    return cb / cb.norm(dim=1, keepdim=True)


@dataclass
class QuaternionCodec:
    """Gain-shape quantization of a tensor's quaternions (see the module docstring).

    Args:
        dir_bits: bits of a direction code (codebook of ``2**dir_bits`` points on S^3).
        norm_bits: bits of a gain code (``2**norm_bits`` levels times a per-row fp16 scale).
        iters: Lloyd iterations of the spherical k-means.
        sample: directions a per-tensor codebook is fitted on (all are encoded).
        seed: seed of the subsample and initialization (encoding is deterministic).
        codebook: ``"shared"`` (one per bit budget, stored once per model) or ``"tensor"``.
    """

    dir_bits: int = 12
    norm_bits: int = 4
    iters: int = 10
    sample: int = 65536
    seed: int = 0
    codebook: str = "shared"

    def __post_init__(self) -> None:
        for key, lo, hi in (("dir_bits", 1, 16), ("norm_bits", 1, 16)):
            value = getattr(self, key)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"QuaternionCodec.{key} must be an int in [{lo}, {hi}], got {value!r}")
        if self.codebook not in ("shared", "tensor"):
            raise ValueError(f"QuaternionCodec.codebook must be 'shared' or 'tensor', got {self.codebook!r}")

    @property
    def bits_per_weight(self) -> float:
        """Code bits per weight, before codebooks and scales."""
        return (self.dir_bits + self.norm_bits) / 4

    def encode(self, t: torch.Tensor, what: str = "tensor") -> Encoded:
        polar = to_polar(t, what)
        rows, n = polar.norms.shape
        dirs = polar.directions.reshape(-1, 4).to(torch.float32)
        if self.codebook == "shared":
            stored = shared_codebook(self.dir_bits, self.seed, self.iters).to(torch.float16)
        else:
            stored = spherical_kmeans(dirs, 1 << self.dir_bits, self.iters, self.sample,
                                      self.seed).to(torch.float16)
        codebook = _round_unit(stored)  # exactly what the decoder will use
        dir_codes = _nearest(dirs, codebook)
        # gain = projection of q on its codeword: minimizes |q - g c|^2 for the chosen c
        gains = (polar.quaternions.reshape(-1, 4).to(torch.float32)
                 * codebook[dir_codes]).sum(dim=1).clamp_min(0).reshape(rows, n)
        scales = gains.amax(dim=1).to(torch.float16)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        unit_gains = gains / scales.to(torch.float32).unsqueeze(1)
        levels = scalar_kmeans(unit_gains, 1 << self.norm_bits).to(torch.float16)
        lv = levels.to(torch.float32)
        norm_codes = torch.bucketize(unit_gains.reshape(-1), (lv[1:] + lv[:-1]) / 2)
        parts = {
            "dir_codes": pack_bits(dir_codes, self.dir_bits),
            "norm_codes": pack_bits(norm_codes, self.norm_bits),
            "codebook": stored,
            "levels": levels,
            "scales": scales,
        }
        meta = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                "dir_bits": self.dir_bits, "norm_bits": self.norm_bits, "rows": rows, "n": n}
        if self.codebook == "shared":  # containers store a shared part once under this key
            meta["shared"] = {"codebook": f"quaternion/codebook-d{self.dir_bits}-s{self.seed}"}
        return Encoded("quaternion", parts, meta)


@register_codec("quaternion")
def decode_quaternion(enc: Encoded) -> torch.Tensor:
    m, p = enc.meta, enc.parts
    count = m["rows"] * m["n"]
    dirs = _round_unit(p["codebook"])[unpack_bits(p["dir_codes"], m["dir_bits"], count)]
    gains = p["levels"].to(torch.float32)[unpack_bits(p["norm_codes"], m["norm_bits"], count)]
    gains = gains.reshape(m["rows"], m["n"]) * p["scales"].to(torch.float32).unsqueeze(1)
    q = gains.unsqueeze(-1) * dirs.reshape(m["rows"], m["n"], 4)
    return from_quaternions(q, tuple(m["shape"]), getattr(torch, m["dtype"]))
