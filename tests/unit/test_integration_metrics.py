"""Integration metrics (lit_models/topology/intrinsic.py, integration.py) against known answers:
intrinsic dimension of manifolds of known dimension, LZ76 on a published worked example and on
constant / periodic / random sequences, transfer entropy on coupled and independent processes,
the reconstruction error of exact and lossy projections, and one clear error per bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lhp.errors import UserError
from lit_models.topology import compute_persistence
from lit_models.topology.integration import (
    lz76_complexity,
    lz_complexity,
    pca_project,
    reconstruction_error,
    symbolize,
    transfer_entropy,
)
from lit_models.topology.intrinsic import mle_dimension, twonn_dimension


def embed(z: np.ndarray, width: int, seed: int = 0) -> np.ndarray:
    """``z`` (N, d) placed in R^width by a random isometry (orthonormal columns)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(width, z.shape[1])))
    return z @ q.T


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    return np.column_stack([t * np.cos(t), 21 * rng.random(n), t * np.sin(t)])


def sphere(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, dim + 1))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


RNG = np.random.default_rng(0)
MANIFOLDS = {  # name: (points in high dimension, true intrinsic dimension)
    "gaussian 2-D plane in R^100": (embed(RNG.normal(size=(1500, 2)), 100), 2),
    "gaussian 6-D subspace in R^100": (embed(RNG.normal(size=(1500, 6)), 100), 6),
    "2-sphere in R^50": (embed(sphere(1500, 2, RNG), 50), 2),
    "swiss roll in R^30": (embed(swiss_roll(1500, RNG), 30), 2),
}


@pytest.mark.parametrize("name", list(MANIFOLDS))
@pytest.mark.parametrize("estimator", [twonn_dimension, mle_dimension])
def test_intrinsic_dimension_of_known_manifolds(name: str, estimator) -> None:
    points, true_dim = MANIFOLDS[name]
    est = estimator(points)
    assert abs(est.dimension - true_dim) <= 0.15 * true_dim, (name, est)
    assert est.n_points == 1500 and est.n_duplicates == 0


def test_intrinsic_dimension_ignores_width_and_drops_duplicates() -> None:
    z = RNG.normal(size=(800, 3))
    narrow, wide = twonn_dimension(embed(z, 4)), twonn_dimension(torch.tensor(embed(z, 300)))
    assert wide.dimension == pytest.approx(narrow.dimension, rel=1e-6)  # isometry: same distances
    doubled = mle_dimension(np.concatenate([z, z[:100]]))
    assert doubled.n_duplicates == 100 and doubled.dimension == pytest.approx(
        mle_dimension(z).dimension)


def test_lz76_worked_example_and_known_sequences() -> None:
    # Kaspar & Schuster (1987): 0001101001000101 parses as 0.001.10.100.1000.101 -> 6 words
    assert lz76_complexity([int(c) for c in "0001101001000101"]) == 6
    assert lz76_complexity([0]) == 1 and lz76_complexity([0, 1]) == 2
    n = 4096
    constant = lz_complexity(np.zeros(n, dtype=int))
    assert lz76_complexity(np.zeros(n, dtype=int)) == 2  # "0" then one copyable word
    assert constant == pytest.approx(2 * math.log2(n) / n)
    periodic = lz_complexity(np.tile([0, 1, 2, 3, 2, 1], n // 6))
    rng = np.random.default_rng(1)
    for k in (2, 4, 8):
        iid = lz_complexity(rng.integers(0, k, n))
        assert 0.88 <= iid <= 1.12, (k, iid)
    assert constant < periodic < 0.05  # both tiny next to noise
    # rows are concatenated in order
    assert lz_complexity(np.zeros((2, 8), dtype=int)) == lz_complexity(np.zeros(16, dtype=int))


def coupled(n: int, rng: np.random.Generator, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """X i.i.d. over 4 symbols; Y_t = X_{t-1}, replaced by a random symbol with prob ``noise``."""
    x = rng.integers(0, 4, n)
    y = np.concatenate([[0], np.where(rng.random(n - 1) < noise, rng.integers(0, 4, n - 1), x[:-1])])
    return x, y


def test_transfer_entropy_coupled_independent_and_direction() -> None:
    rng = np.random.default_rng(2)
    x, y = coupled(4000, rng)
    forward, backward = transfer_entropy(x, y), transfer_entropy(y, x)
    # Y_t = X_{t-1} w.p. 0.9 + 0.1/4: H(Y_t | Y_{t-1}) - H(Y_t | X_{t-1}) = 2 - H(0.925, 3 x 0.025)
    p = np.array([0.925, 0.025, 0.025, 0.025])
    expected = 2 + float((p * np.log2(p)).sum())
    assert forward == pytest.approx(expected, abs=0.03)
    assert abs(backward) < 0.02 and forward > 50 * max(abs(backward), 1e-3)
    xi, yi = rng.integers(0, 4, 4000), rng.integers(0, 4, 4000)
    raw = transfer_entropy(xi, yi, surrogates=0)
    assert raw > 0.002  # the plug-in bias the surrogates remove
    assert abs(transfer_entropy(xi, yi)) < 0.3 * raw
    # a same-time copy (consecutive layers share the residual stream) transfers nothing new: the
    # conditional surrogate gives 0 (a plain time shuffle of X gives -0.089 bits here)
    short = xi[:300]
    assert abs(transfer_entropy(short, short.copy())) < 0.01
    # rows: transitions are counted within rows only
    assert transfer_entropy(x.reshape(8, 500), y.reshape(8, 500)) == pytest.approx(forward, abs=0.03)


def test_constant_sequences_give_the_documented_minimum() -> None:
    const = np.zeros(100, dtype=int)
    assert transfer_entropy(const, np.arange(100) % 3) == 0.0
    assert transfer_entropy(np.arange(100) % 3, const) == 0.0
    states = np.ones((50, 8))
    assert (symbolize(states, k=4) == 0).all()  # one distinct state: one symbol
    assert lz_complexity(symbolize(states, k=4)) == pytest.approx(2 * math.log2(50) / 50)


def test_symbolize_recovers_clusters() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 300)
    centres = rng.normal(size=(3, 16)) * 10
    codes = symbolize(centres[labels] + rng.normal(size=(300, 16)) * 0.1, k=3)
    # the same partition up to renaming
    assert len(set(zip(labels.tolist(), codes.tolist(), strict=True))) == 3


def test_reconstruction_error_exact_and_lossy() -> None:
    rng = np.random.default_rng(4)
    plane = embed(rng.normal(size=(80, 2)), 20)
    err = reconstruction_error(plane, dim=2)
    assert max(err.values()) < 1e-9  # a 2-D cloud projected to its own plane: same distances
    theta = rng.uniform(0, 2 * np.pi, 80)
    circle = embed(np.column_stack([np.cos(theta), np.sin(theta)]), 20)
    diagram = compute_persistence(circle, max_dim=1, method="ripser")
    lossy = reconstruction_error(circle, dim=1, diagram=diagram)
    assert lossy[1] > 0.5  # the loop (persistence ~ sqrt(3) - small) is lost on a line
    assert reconstruction_error(circle, dim=2)[1] < 1e-9
    assert pca_project(circle, 3).shape == (80, 3)


@pytest.mark.parametrize("call, match", [
    (lambda: twonn_dimension(np.zeros((2, 5))), "at least 3 distinct points"),
    (lambda: twonn_dimension(np.ones((10, 5))), r"got 1 \(of 10\)"),
    (lambda: mle_dimension(RNG.normal(size=(15, 4))), "at least 21 distinct"),
    (lambda: mle_dimension(RNG.normal(size=(50, 4)), k1=5, k2=3), "k1 <= k2"),
    (lambda: twonn_dimension(np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]])), "NaN"),
    (lambda: symbolize(np.array([[0.0], [np.inf]])), "inf"),
    (lambda: symbolize(np.zeros((0, 3))), "empty"),
    (lambda: symbolize(np.zeros((5, 3)), k=300), "k"),
    (lambda: lz_complexity([]), "T >= 1"),
    (lambda: lz_complexity([0.5, 1.0]), "non-negative integers"),
    (lambda: transfer_entropy([0, 1], [1, 0]), "T >= 3"),
    (lambda: transfer_entropy([0, 1, 0, 1], [1, 0, 1]), "same shape"),
    (lambda: reconstruction_error(RNG.normal(size=(10, 3)), method="auto"), "explicit method"),
    (lambda: reconstruction_error(np.full((4, 3), np.nan)), "NaN"),
])
def test_bad_input_is_one_clear_user_error(call, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()
