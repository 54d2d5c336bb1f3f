"""Topology of a stream of vectors over a sliding window, with Betti-change events.

``StreamingAnalyzer`` keeps the last ``window`` vectors in a fixed ring buffer (memory is
bounded on an endless stream: the buffer, one diagram, and at most ``latency_history``
timings) and analyses the window whenever ``chunk_points`` new vectors arrived or
``max_latency_ms`` passed since the end of the last analysis, whichever comes first (the clock
is read on each push; nothing runs between pushes). An analysis computes

* H0 of the whole window, exact, from its Euclidean MST (``mst.euclidean_mst``);
* H1 of at most ``landmarks`` points picked by max-min (farthest point) subsampling
  (``gudhi.subsampling``), with ripser's Rips (default; the same diagram as GUDHI "collapse"
  or "rips", 2-3x faster here) or, for D <= 3, optionally alpha. The H1 part is an
  approximation (``Diagram.approximate``): landmarks miss loops smaller than their spacing;

and compares the Betti numbers of consecutive windows at one ``scale`` (``events.betti_events``).
``scale="auto"`` fixes the scale at the first analysis: ``auto_scale_factor`` (3) x the median
MST edge length of that window's landmarks. Landmarks are sparser than the window, so this
scale is above the window's noise (H0) and above the landmark spacing (H1 loops can be born).

Reuse between windows, honestly: only the ring buffer (and the scale fixed at the first
window). The exact H0 is rebuilt for every window because no reuse found here beats the
near-linear rebuild:

* insertions alone would allow it: MST(W + new) is contained in MST(W) plus the edges at the new
  points (cycle property), but
* a sliding window also deletes the oldest points, and an MST does not survive deletions: a
  removed vertex splits the tree, and the replacement edges between the pieces need the same
  nearest-foreign-point queries over the survivors as a rebuild. The exact alternative that does
  reuse, keeping per-chunk-pair MSTs (MST(W) is contained in the union over chunk pairs i <= j of
  MST(C_i + C_j), again by the cycle property), costs ~w/c pair MSTs per new chunk plus an MST
  of their union: more than the kd-tree Borůvka rebuild (~10 ms per 10k points in R^3 unloaded).

``stats()`` reports the latency actually achieved.

Stream API: ``process_stream(states)`` consumes an iterable of states (one vector (D,) or a
batch (n, D) per item: numpy, torch or lists) through the same chunking (an analysis every
``chunk_points`` new vectors or ``max_latency_ms``; defaults 1,000 points / 10 ms) and yields
the ``BettiEvent`` objects as they happen, so they can be filtered lazily::

    knots = (e for e in analyzer.process_stream(states) if e.complexity > 5)

``complexity`` is the total Betti number (beta_0 + beta_1) of the window the event leads to, at
the analyser's scale (``events`` module docstring). At the end of the iterable the points not
yet analysed get one last analysis (``flush=True``). A state with NaN or inf raises a
ValueError naming the item; a stream with fewer than 3 points in all yields nothing (no scale
can be fixed from fewer than 3 landmarks, and an event needs two analysed windows).

Cache: with ``cache=TopologyCache(...)`` (``cache`` module) each window's diagram is looked up
by the window's bytes and the analysis parameters before it is computed, so a stream seen
before (the same text through the same model) is answered from memory or disk.

Measured (2 cores shared with a training run, load average ~5, so slow; ``python -m
experiments.bench.persistence``): window 10,000 in R^3, 256 landmarks, H0+H1: p50 ~110 ms with
ripser vs ~170 ms with GUDHI collapse; R^8: p50 ~800 ms (the exact H0: kd-tree k-NN queries in
8-D dominate). H0 only, R^3: p50 ~57 ms. The 10 ms latency target of the TCS seed is met only
for small windows: with larger ones every push after the deadline triggers a new analysis.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from gudhi.subsampling import choose_n_farthest_points

from lit_models.topology.cache import TopologyCache
from lit_models.topology.diagrams import Diagram, betti_numbers
from lit_models.topology.events import BettiEvent, betti_events
from lit_models.topology.mst import KDTREE_MAX_DIM
from lit_models.topology.persistence import compute_persistence

AUTO_SCALE_FACTOR = 3.0
MAX_WINDOW_BYTES = 4 * 2**30  # ring buffer cap: a larger window is a configuration error
H1_METHODS = ("ripser", "collapse", "rips", "alpha")


class StreamingAnalyzer:
    """Sliding-window H0/H1 analysis of a vector stream; ``push`` returns Betti events."""

    def __init__(self, window: int, chunk_points: int = 1000, max_latency_ms: float = 10.0,
                 landmarks: int = 256, scale: float | str = "auto", dim: int = 1,
                 h1_method: str = "ripser", auto_scale_factor: float = AUTO_SCALE_FACTOR,
                 clock: Callable[[], float] = time.perf_counter,
                 latency_history: int = 10_000, cache: TopologyCache | None = None) -> None:
        if not _is_int(window) or window <= 0:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if not _is_int(chunk_points) or chunk_points <= 0:
            raise ValueError(f"chunk_points must be a positive int, got {chunk_points!r}")
        if not max_latency_ms > 0:
            raise ValueError(f"max_latency_ms must be > 0 (math.inf disables), got "
                             f"{max_latency_ms!r}")
        if not _is_int(landmarks) or landmarks < 3:
            raise ValueError(f"landmarks must be an int >= 3, got {landmarks!r}")
        if dim not in (0, 1):
            raise ValueError(f"dim must be 0 (H0) or 1 (H0 and H1), got {dim!r}")
        if scale != "auto" and not (isinstance(scale, int | float) and not isinstance(scale, bool)
                                    and 0 < scale < math.inf):
            raise ValueError(f"scale must be a positive finite number or 'auto', got {scale!r}")
        if not (isinstance(auto_scale_factor, int | float) and 0 < auto_scale_factor < math.inf):
            raise ValueError(f"auto_scale_factor must be a positive finite number, got "
                             f"{auto_scale_factor!r}")
        if h1_method not in H1_METHODS:
            raise ValueError(f"h1_method must be one of {H1_METHODS}, got {h1_method!r}")
        if not _is_int(latency_history) or latency_history <= 0:
            raise ValueError(f"latency_history must be > 0, got {latency_history!r}")
        self.window, self.chunk_points, self.max_latency_ms = window, chunk_points, max_latency_ms
        self.landmarks, self.dim, self.h1_method = landmarks, dim, h1_method
        self.auto_scale_factor = auto_scale_factor
        self.cache = cache
        self.scale: float | None = None if scale == "auto" else float(scale)
        self.clock = clock
        self.n_features: int | None = None  # D, fixed by the first push
        self._buf: np.ndarray | None = None
        self._head = 0  # next write position in the ring
        self._count = 0  # filled rows (<= window)
        self.points_seen = 0
        self._pending = 0  # points since the last analysis
        self._last_time: float | None = None
        self.last_diagram: Diagram | None = None
        self.windows_analysed = 0
        self._latencies_ms: deque[float] = deque(maxlen=latency_history)

    # ---- input ---------------------------------------------------------------------------
    def push(self, vector: np.ndarray | torch.Tensor | list[float]) -> list[BettiEvent]:
        """Add one vector (D,); returns the events of the analysis it triggered, if any."""
        v = _to_numpy(vector)
        if v.ndim != 1:
            raise ValueError(f"push takes one vector of shape (D,), got shape {v.shape}; "
                             "use push_batch for several")
        return self.push_batch(v[None, :])

    def push_batch(self, array: np.ndarray | torch.Tensor) -> list[BettiEvent]:
        """Add vectors (n, D) in order; analyses run at every trigger met along the way."""
        a = _to_numpy(array)
        if a.ndim != 2:
            raise ValueError(f"push_batch takes an (n, D) array, got shape {a.shape}")
        self._check_features(a.shape[1])
        if not np.isfinite(a).all():
            raise ValueError("stream vectors contain NaN or inf")
        if self._last_time is None and len(a):
            self._last_time = self.clock()  # latency counts from the first point
        events: list[BettiEvent] = []
        i = 0
        while i < len(a):
            take = min(len(a) - i, self.chunk_points - self._pending)
            self._write(a[i:i + take])
            i += take
            if self._pending >= self.chunk_points or self._latency_due():
                events += self._analyse()
        return events

    def process_stream(self, states: Iterable[np.ndarray | torch.Tensor | list[float]],
                       flush: bool = True) -> Iterator[BettiEvent]:
        """Feed ``states`` (each a vector (D,) or a batch (n, D)) and yield Betti events as the
        analyses find them; ``flush``: analyse the leftover points at the end. See the module
        docstring for the complexity measure and the behaviour on bad or short input."""
        for i, state in enumerate(states):
            try:
                a = _to_numpy(state)
            except ValueError as err:
                raise ValueError(f"stream item {i}: {err}") from err
            if a.ndim == 1:
                a = a[None, :]
            if a.ndim != 2:
                raise ValueError(f"stream item {i}: expected a vector (D,) or a batch (n, D), "
                                 f"got shape {a.shape}")
            bad = ~np.isfinite(a)
            if bad.any():
                raise ValueError(f"stream item {i}: NaN or inf in row {int(np.argwhere(bad)[0, 0])}"
                                 "; clean or drop such states before streaming them")
            try:
                self._check_features(a.shape[1])
            except ValueError as err:
                raise ValueError(f"stream item {i}: {err}") from err
            yield from self.push_batch(a)
        if flush and self._pending > 0:
            yield from self._analyse()

    def _check_features(self, d: int) -> None:
        if self.n_features is None:
            if d == 0:
                raise ValueError("stream vectors must have dimension >= 1")
            if self.window * d * 8 > MAX_WINDOW_BYTES:
                raise ValueError(f"window={self.window} vectors of dimension {d} need "
                                 f"{self.window * d * 8 / 2**30:.1f} GiB of ring buffer, above "
                                 f"MAX_WINDOW_BYTES ({MAX_WINDOW_BYTES / 2**30:.0f} GiB): use a "
                                 "smaller window")
            self.n_features = d
            self._buf = np.zeros((self.window, d), dtype=np.float64)
        elif d != self.n_features:
            raise ValueError(f"vector dimension {d} does not match the stream's dimension "
                             f"{self.n_features} (fixed by the first push)")

    def _write(self, rows: np.ndarray) -> None:
        m, w = len(rows), self.window
        self.points_seen += m
        self._pending += m
        if m >= w:
            self._buf[:] = rows[-w:]
            self._head, self._count = 0, w
            return
        first = min(m, w - self._head)
        self._buf[self._head:self._head + first] = rows[:first]
        self._buf[:m - first] = rows[first:]
        self._head = (self._head + m) % w
        self._count = min(w, self._count + m)

    def _latency_due(self) -> bool:
        elapsed_ms = (self.clock() - self._last_time) * 1000.0
        return self._pending > 0 and elapsed_ms >= self.max_latency_ms

    # ---- analysis ------------------------------------------------------------------------
    def window_points(self) -> np.ndarray:
        """The current window (a view; row order is the ring's, not the stream's)."""
        return self._buf[:self._count] if self._buf is not None else np.zeros((0, 0))

    def analyse(self) -> list[BettiEvent]:
        """Analyse the current window now (also called by the triggers)."""
        return self._analyse()

    def _window_diagram(self, x: np.ndarray) -> Diagram:
        """H0 of the window (exact MST) and, with dim 1, H1 of its landmarks."""
        pairs = {0: compute_persistence(x, max_dim=0, method="mst")[0]}
        landmarks = x
        if self.dim >= 1:
            landmarks = self._landmarks(x)
            method = self.h1_method
            if method == "alpha" and x.shape[1] > 3:
                method = "collapse"
            pairs[1] = compute_persistence(landmarks, max_dim=1, method=method)[1]
        return Diagram(pairs, max_dim=self.dim, method="mst+landmarks",
                       approximate=self.dim >= 1 and len(landmarks) < len(x), n_points=len(x))

    def _cache_params(self) -> dict[str, object]:
        return {"query": "streaming-window", "dim": self.dim, "landmarks": self.landmarks,
                "h1_method": self.h1_method}

    def _analyse(self) -> list[BettiEvent]:
        start = time.perf_counter()
        x = self.window_points()
        if self.cache is not None:
            diagram = self.cache.get_or_compute(x, self._cache_params(),
                                                lambda: self._window_diagram(x))
        else:
            diagram = self._window_diagram(x)
        if self.scale is None:
            landmarks = self._landmarks(x)
            if len(landmarks) >= 3:
                lm_h0 = compute_persistence(landmarks, max_dim=0, method="mst").finite(0)
                median = float(np.median(lm_h0[:, 1]))
                if median > 0:
                    self.scale = self.auto_scale_factor * median
        events: list[BettiEvent] = []
        if self.last_diagram is not None and self.scale is not None:
            events = betti_events(self.last_diagram, diagram, self.scale, self.points_seen)
        self.last_diagram = diagram
        self.windows_analysed += 1
        self._pending = 0
        self._latencies_ms.append((time.perf_counter() - start) * 1000.0)
        self._last_time = self.clock()
        return events

    def _landmarks(self, x: np.ndarray) -> np.ndarray:
        if len(x) <= self.landmarks:
            return x
        picked = choose_n_farthest_points(points=x, nb_points=self.landmarks, starting_point=0,
                                          fast=x.shape[1] <= KDTREE_MAX_DIM)
        return np.asarray(picked, dtype=np.float64)

    # ---- reporting -----------------------------------------------------------------------
    def betti(self) -> dict[int, int]:
        """Betti numbers of the last analysed window at the analyser's scale ({} before)."""
        if self.last_diagram is None or self.scale is None:
            return {}
        return betti_numbers(self.last_diagram, self.scale)

    def stats(self) -> dict[str, float]:
        """Achieved analysis latency (ms: mean, p50, p95, max) and counters."""
        lat = np.asarray(self._latencies_ms, dtype=np.float64)
        pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: math.nan)
        return {"windows_analysed": self.windows_analysed, "points_seen": self.points_seen,
                "latency_ms_mean": float(lat.mean()) if len(lat) else math.nan,
                "latency_ms_p50": pct(50), "latency_ms_p95": pct(95),
                "latency_ms_max": float(lat.max()) if len(lat) else math.nan,
                "scale": self.scale if self.scale is not None else math.nan}

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring buffer and the latency history (bounded by construction)."""
        buf = self._buf.nbytes if self._buf is not None else 0
        return buf + 8 * len(self._latencies_ms)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_numpy(x: np.ndarray | torch.Tensor | list[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError) as err:  # ragged rows: vectors of different dimensions
        raise ValueError(f"stream vectors must form an (n, D) array of numbers: {err}") from err
