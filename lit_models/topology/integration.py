"""Empirical integration metrics of hidden-state sequences (TCS checklist, phases 2-3).

* ``symbolize``: a (T, D) state sequence -> T k-means codes (scikit-learn ``KMeans``, seeded),
  the alphabet the two sequence measures below read.
* ``lz76_complexity`` / ``lz_complexity``: Lempel-Ziv (1976) complexity, the number of words of
  the exhaustive-history parsing (Kaspar & Schuster 1987: ``0001101001000101`` ->
  ``0.001.10.100.1000.101``, 6 words), normalised by ``n / log_a(n)``, the asymptotic count of an
  i.i.d. uniform sequence over ``a`` symbols: ~1 for noise, ~0 for a constant or periodic one.
* ``transfer_entropy``: TE X -> Y = I(Y_t ; X_{t-1} | Y_{t-1}) in bits, plug-in (counting)
  estimator with history length 1, minus its mean over ``surrogates`` shuffled surrogates:
  X_{t-1} permuted at random among the transitions that share the same Y_{t-1} (a conditional
  permutation: it keeps p(x_{t-1}, y_{t-1}), p(y_t, y_{t-1}) and so the plug-in bias, and
  destroys only the dependence TE measures). The estimator's positive bias on short sequences
  is removed, so independent processes give ~0 (small negative values are noise, kept as they
  are). A plain time shuffle of X is the wrong null for layers: consecutive layers share the
  residual stream, X_{t-1} ~ Y_{t-1}, and breaking that link inflates the surrogates' bias (on
  256 tokens x 8 symbols it gave TE = -0.7 bits for an untrained GPT). Keep T >> k^3.
* ``reconstruction_error``: bottleneck distance, per homology dimension, between the persistence
  diagram of the states and that of their PCA projection to ``dim`` dimensions (same engine
  method for both): what a ``dim``-D picture of the states loses topologically.

Conventions: sequences may be 1-D (T,) or 2-D (rows, T) of independent rows (transitions are
counted within a row). A constant sequence is allowed and gives the documented minimum: LZ76 2
words (normalised ``2 log_2(n) / n``), transfer entropy exactly 0. Empty or too short
sequences, mismatched lengths, NaN/inf states raise a one-line ``UserError``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans

from lhp.errors import UserError
from lit_models.topology.diagrams import Diagram, bottleneck
from lit_models.topology.intrinsic import clean_points
from lit_models.topology.persistence import compute_persistence

MAX_SYMBOLS = 256  # LZ76 works on the codes as bytes
TE_MIN_LENGTH = 3  # two transitions
TE_SURROGATES = 20


# ----------------------------------------------------------------------------- symbols


def symbolize(states: torch.Tensor | np.ndarray, k: int = 8, seed: int = 0) -> np.ndarray:
    """k-means codes (int64, shape (T,)) of the state sequence ``states`` (T, D).

    Fewer distinct states than ``k``: ``k`` drops to that number (a constant sequence -> all 0).
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SYMBOLS:
        raise UserError(f"symbolize: k (number of k-means symbols) must be an int in "
                        f"1..{MAX_SYMBOLS}, got {k!r}")
    x = clean_points(states, "symbolize states")
    if len(x) == 0:
        raise UserError("symbolize: the state sequence is empty")
    k = min(k, len(np.unique(x, axis=0)))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=1, random_state=seed)
    return km.fit_predict(x.astype(np.float32)).astype(np.int64)


def _symbols(seq: object, what: str, min_length: int = 1) -> np.ndarray:
    """A 2-D (rows, T) int64 array of non-negative codes."""
    arr = np.asarray(seq)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < min_length:
        raise UserError(f"{what}: need a sequence (T,) or rows of sequences (R, T) with "
                        f"T >= {min_length}, got shape {np.asarray(seq).shape}")
    if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise UserError(f"{what}: symbols must be non-negative integers (k-means codes); use "
                        "symbolize(states, k) first")
    return arr.astype(np.int64)


# ----------------------------------------------------------------------------- Lempel-Ziv


def lz76_complexity(seq: object) -> int:
    """Number of words of the LZ76 exhaustive-history parsing of a 1-D symbol sequence.

    Each new word is the shortest extension that cannot be copied from earlier text (the copy may
    overlap the word itself); a last, copyable word counts too. Substring search in C
    (``bytes.find``), so a 10k-symbol sequence takes milliseconds.
    """
    arr = _symbols(seq, "lz76_complexity")
    if arr.shape[0] != 1:
        raise UserError("lz76_complexity: pass one sequence (T,), not rows")
    arr = arr[0]
    if arr.max(initial=0) >= MAX_SYMBOLS:
        raise UserError(f"lz76_complexity: symbols must be < {MAX_SYMBOLS}")
    s = arr.astype(np.uint8).tobytes()
    n, pos, words = len(s), 0, 0
    while pos < n:
        length = 1
        # grow the word while it can be copied from a start before `pos`
        while pos + length <= n and s.find(s[pos:pos + length], 0, pos + length - 1) != -1:
            length += 1
        words += 1
        pos += length
    return words


def lz_complexity(seq: object, alphabet_size: int | None = None) -> float:
    """LZ76 complexity normalised by ``n / log_a(n)`` (``a``: ``alphabet_size``, default the
    number of distinct symbols, at least 2). Rows are concatenated in order."""
    arr = _symbols(seq, "lz_complexity").reshape(-1)
    n = len(arr)
    a = alphabet_size if alphabet_size is not None else max(len(np.unique(arr)), 2)
    if isinstance(a, bool) or not isinstance(a, int) or a < 2:
        raise UserError(f"lz_complexity: alphabet_size must be an int >= 2, got {alphabet_size!r}")
    if n < 2:
        return float(n)  # one symbol is one word; log_a(1) = 0 would make it 0
    return lz76_complexity(arr) * math.log(n, a) / n


# ----------------------------------------------------------------------------- transfer entropy


def _entropy_bits(*columns: np.ndarray) -> float:
    """Plug-in joint entropy (bits) of the aligned integer columns."""
    code = np.ravel_multi_index(columns, [int(c.max()) + 1 for c in columns])
    counts = np.bincount(code)
    p = counts[counts > 0] / len(code)
    return float(-(p * np.log2(p)).sum())


def _te_plugin(y1: np.ndarray, y0: np.ndarray, x0: np.ndarray) -> float:
    """TE X -> Y, history 1, plug-in, from the aligned transitions (y_t, y_{t-1}, x_{t-1})."""
    return (_entropy_bits(y1, y0) - _entropy_bits(y0) - _entropy_bits(y1, y0, x0)
            + _entropy_bits(y0, x0))


def transfer_entropy(x: object, y: object, surrogates: int = TE_SURROGATES, seed: int = 0
                     ) -> float:
    """Bias-corrected transfer entropy X -> Y in bits (see the module docstring).

    ``x``, ``y``: symbol sequences of the same shape, (T,) or (R, T), T >= 3. ``surrogates`` = 0
    returns the raw plug-in estimate.
    """
    xs, ys = _symbols(x, "transfer_entropy x", TE_MIN_LENGTH), _symbols(y, "transfer_entropy y",
                                                                        TE_MIN_LENGTH)
    if xs.shape != ys.shape:
        raise UserError(f"transfer_entropy: x and y must have the same shape, got "
                        f"{xs.shape} and {ys.shape}")
    if isinstance(surrogates, bool) or not isinstance(surrogates, int) or surrogates < 0:
        raise UserError(f"transfer_entropy: surrogates must be an int >= 0, got {surrogates!r}")
    if len(np.unique(xs)) == 1 or len(np.unique(ys)) == 1:
        return 0.0  # a constant side carries or receives no information: exactly 0
    # transitions within rows
    y1, y0, x0 = ys[:, 1:].ravel(), ys[:, :-1].ravel(), xs[:, :-1].ravel()
    raw = _te_plugin(y1, y0, x0)
    if surrogates == 0:
        return raw
    rng = np.random.default_rng(seed)
    by_y0 = np.argsort(y0, kind="stable")  # positions grouped by y_{t-1}
    null = []
    for _ in range(surrogates):
        shuffled = np.lexsort((rng.random(len(y0)), y0))  # same groups, random order inside
        x_null = np.empty_like(x0)
        x_null[by_y0] = x0[shuffled]
        null.append(_te_plugin(y1, y0, x_null))
    return raw - float(np.mean(null))


# ----------------------------------------------------------------------------- reconstruction


def pca_project(points: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) coordinates of the centred ``points`` on their first ``dim`` principal axes."""
    x = clean_points(points, "pca_project points")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise UserError(f"pca_project: dim must be an int >= 1, got {dim!r}")
    centred = x - x.mean(axis=0) if len(x) else x
    if len(x) < 2:
        return np.zeros((len(x), dim))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:dim].T
    if proj.shape[1] < dim:  # dim > rank bound min(N, D): pad with zero coordinates
        proj = np.pad(proj, ((0, 0), (0, dim - proj.shape[1])))
    return proj


def reconstruction_error(points: torch.Tensor | np.ndarray, dim: int = 2, max_dim: int = 1,
                         method: str = "ripser", diagram: Diagram | None = None
                         ) -> dict[int, float]:
    """Bottleneck distance per homology dimension (0..``max_dim``) between the persistence
    diagram of ``points`` and that of their PCA projection to ``dim`` dimensions.

    ``diagram``: the points' diagram if already computed (its ``method`` and ``max_dim`` are
    then used for the projection too, so both sides share one filtration). ``method`` must not
    be "auto" (auto may pick alpha for the projection and Rips for the points: not comparable).
    """
    x = clean_points(points, "reconstruction_error points")
    if diagram is None:
        if method == "auto":
            raise UserError("reconstruction_error: pass an explicit method (e.g. 'ripser'): "
                            "'auto' can pick different filtrations for the two clouds")
        diagram = compute_persistence(x, max_dim=max_dim, method=method)
    else:
        method, max_dim = diagram.method, diagram.max_dim
        if diagram.n_points != len(x):
            raise UserError(f"reconstruction_error: the diagram has {diagram.n_points} points, "
                            f"the cloud {len(x)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dims dropped: same as `diagram`'s
        projected = compute_persistence(pca_project(x, dim), max_dim=max_dim, method=method)
    return {d: bottleneck(diagram, projected, d) for d in range(max_dim + 1)}
