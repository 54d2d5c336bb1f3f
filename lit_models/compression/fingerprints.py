"""Weight fingerprints: spectral, norm and quaternion statistics of one tensor (JSON-able).

Per tensor (viewed as the matrix ``(shape[0], -1)``, as the quaternion maps do):

* spectrum: singular values summarized by quantiles and energy ranks, spectral norm ``s_1``,
  condition number ``s_1 / s_min`` (inf when singular), effective rank ``exp(H(p))`` with
  ``p = s / sum(s)`` (Roy & Vetterli 2007), stable rank ``||W||_F^2 / s_1^2``;
* norms: mean, std, absolute max, Frobenius norm, fraction of zeros, excess kurtosis;
* quaternions: gain (``|q|``) quantiles, and where the unit directions lie on S^3: the mean
  resultant length ``|mean(u)|`` (0 for a uniform spread, 1 when all coincide), the normalized
  entropy of the 16 sign orthants (1 = even), and the Kolmogorov-Smirnov distance of the first
  component against its law under the uniform (Haar) distribution, density ``(2/pi) sqrt(1-t^2)``.

Knot polynomials. The write-up lists Alexander, Jones and HOMFLY polynomials as "geometric
fingerprints". Those are invariants of knots and links (closed curves in R^3 up to isotopy);
a weight matrix defines no knot, so any such number would have to come from an arbitrary
construction (e.g. reading rows as a polygon) whose value says nothing about the weights. We
do not compute them; the spectral and S^3 statistics above are what is measured instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from lit_models.compression.quaternion import matrix_shape, to_polar

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _haar_first_component_cdf(t: torch.Tensor) -> torch.Tensor:
    """CDF of one coordinate of a uniform point on S^3: ``(t sqrt(1-t^2) + asin t) / pi + 1/2``."""
    t = t.clamp(-1.0, 1.0)
    return (t * torch.sqrt(1 - t * t) + torch.asin(t)) / math.pi + 0.5


def spectrum(matrix: torch.Tensor) -> dict[str, Any]:
    s = torch.linalg.svdvals(matrix.to(torch.float64))
    total = float(s.sum())
    if total == 0:
        return {"spectral_norm": 0.0, "condition_number": math.inf, "effective_rank": 0.0,
                "stable_rank": 0.0, "rank_90": 0, "rank_99": 0,
                "singular_value_quantiles": [0.0] * len(QUANTILES), "n_singular_values": s.numel()}
    p = s / total
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    energy = (s**2).cumsum(0) / (s**2).sum()
    smin = float(s[-1])
    return {
        "spectral_norm": float(s[0]),
        "condition_number": float(s[0]) / smin if smin > 0 else math.inf,
        "effective_rank": math.exp(entropy),
        "stable_rank": float((s**2).sum() / s[0] ** 2),
        "rank_90": int((energy < 0.90).sum()) + 1,
        "rank_99": int((energy < 0.99).sum()) + 1,
        "singular_value_quantiles": torch.quantile(s, torch.tensor(QUANTILES, dtype=s.dtype)).tolist(),
        "n_singular_values": s.numel(),
    }


def quaternion_stats(tensor: torch.Tensor) -> dict[str, Any]:
    polar = to_polar(tensor)
    norms = polar.norms.reshape(-1)
    dirs = polar.directions.reshape(-1, 4)[norms > 0]
    if dirs.shape[0] == 0:
        return {"n_quaternions": norms.numel(), "zero_fraction": 1.0}
    signs = (dirs > 0).to(torch.int64) @ torch.tensor([1, 2, 4, 8])
    counts = torch.bincount(signs, minlength=16).to(torch.float64)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum()) / math.log(16)
    first = dirs[:, 0].sort().values
    n = first.numel()
    cdf = _haar_first_component_cdf(first)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    ks = float(torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max())
    return {
        "n_quaternions": norms.numel(),
        "zero_fraction": float((norms == 0).double().mean()),
        "gain_quantiles": torch.quantile(norms[: 1 << 24], torch.tensor(QUANTILES, dtype=norms.dtype)).tolist(),
        "mean_resultant_length": float(dirs.mean(dim=0).norm()),
        "orthant_entropy": entropy,
        "ks_first_component_vs_haar": ks,
    }


def fingerprint(tensor: torch.Tensor, name: str = "tensor") -> dict[str, Any]:
    """Every statistic of the module docstring for one floating-point tensor."""
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: fingerprints need a floating-point tensor, got {tensor.dtype}")
    x = tensor.detach().to(torch.float64).reshape(-1)
    rows, cols = matrix_shape(tensor.shape)
    std = float(x.std()) if x.numel() > 1 else 0.0
    out: dict[str, Any] = {
        "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
        "numel": x.numel(), "mean": float(x.mean()) if x.numel() else 0.0, "std": std,
        "abs_max": float(x.abs().max()) if x.numel() else 0.0, "frobenius": float(x.norm()),
        "zero_fraction": float((x == 0).double().mean()) if x.numel() else 0.0,
        "excess_kurtosis": float(((x - x.mean()) ** 4).mean() / std**4 - 3) if std > 0 else 0.0,
    }
    if tensor.dim() >= 2 and x.numel():
        out["spectrum"] = spectrum(x.reshape(rows, cols))
    if x.numel():
        out["quaternion"] = quaternion_stats(tensor)
    return out


def fingerprint_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {k: fingerprint(v, k) for k, v in state_dict.items() if v.is_floating_point()}
