"""StreamingAnalyzer: triggers, events on a changing stream, bounded memory, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_models.topology import StreamingAnalyzer


class FakeClock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def blob(n: int, center, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(center, dtype=np.float64) + sigma * rng.normal(size=(n, len(center)))


def ring(n: int, rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, 2 * np.pi, n)
    return np.c_[np.cos(t), np.sin(t)] + 0.01 * rng.normal(size=(n, 2))


def analyser(**kwargs) -> StreamingAnalyzer:
    defaults = dict(window=100, chunk_points=100, landmarks=40, scale=0.5, dim=1,
                    clock=FakeClock())
    return StreamingAnalyzer(**{**defaults, **kwargs})


def test_chunk_trigger_and_stats():
    rng = np.random.default_rng(0)
    a = analyser()
    pts = blob(250, [0, 0], 0.05, rng)
    assert all(a.push(p) == [] for p in pts[:99])
    assert a.windows_analysed == 0
    a.push(pts[99])
    assert a.windows_analysed == 1 and a.betti() == {0: 1, 1: 0}
    a.push_batch(pts[100:])  # 150 more: one more analysis at 200, 50 pending
    stats = a.stats()
    assert stats["windows_analysed"] == 2 and stats["points_seen"] == 250
    assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p95"] <= stats["latency_ms_max"]


def test_latency_trigger_uses_the_clock():
    clock = FakeClock()
    a = analyser(clock=clock, max_latency_ms=10.0, chunk_points=10_000)
    rng = np.random.default_rng(1)
    a.push_batch(blob(5, [0, 0], 0.05, rng))
    clock.now += 0.005
    a.push(np.zeros(2))
    assert a.windows_analysed == 0
    clock.now += 0.006  # 11 ms since the first point
    a.push(np.zeros(2))
    assert a.windows_analysed == 1
    clock.now += 0.009
    a.push(np.zeros(2))
    assert a.windows_analysed == 1  # 9 ms since the last analysis


@pytest.mark.parametrize("first,second,kind", [
    ("one", "two", "split"), ("two", "one", "merge"),
    ("one", "ring", "loop_birth"), ("ring", "one", "loop_death"),
])
def test_events_on_a_changing_stream(first, second, kind):
    rng = np.random.default_rng(2)
    make = {"one": lambda: blob(100, [0, 0], 0.03, rng),
            "two": lambda: np.concatenate([blob(50, [0, 0], 0.03, rng),
                                           blob(50, [4, 0], 0.03, rng)]),
            "ring": lambda: ring(100, rng)}
    a = analyser()
    assert a.push_batch(make[first]()) == []  # first window: the baseline
    assert a.push_batch(make[first]()) == []  # same shape: no change
    events = a.push_batch(make[second]())
    assert [e.kind for e in events] == [kind]
    assert events[0].position == 300 and events[0].magnitude == 1 and events[0].scale == 0.5


def test_auto_scale_and_h0_only():
    rng = np.random.default_rng(3)
    a = analyser(scale="auto", dim=0)
    a.push_batch(blob(100, [0, 0], 0.03, rng))
    assert 0 < a.scale < 1.0 and a.last_diagram.max_dim == 0
    events = a.push_batch(np.concatenate([blob(50, [0, 0], 0.03, rng),
                                          blob(50, [4, 0], 0.03, rng)]))
    assert [e.kind for e in events] == ["split"]


def test_memory_bounded_on_a_long_stream():
    rng = np.random.default_rng(4)
    a = analyser(window=50, chunk_points=1000, landmarks=16, dim=0, latency_history=8)
    a.push(rng.normal(size=3))
    size = a.nbytes + 8 * 8  # ring + a full latency history
    for _ in range(20):
        a.push_batch(torch.randn(1000, 3))
    assert a.points_seen == 20_001 and a.windows_analysed == 20
    assert a.window_points().shape == (50, 3) and a.nbytes <= size


def test_window_keeps_the_latest_points():
    a = analyser(window=4, chunk_points=10_000)
    a.push_batch(np.arange(10, dtype=float).reshape(5, 2))
    assert sorted(a.window_points()[:, 0]) == [2, 4, 6, 8]
    a.push_batch(np.arange(100, 120, dtype=float).reshape(10, 2))  # more than the window
    assert sorted(a.window_points()[:, 0]) == [112, 114, 116, 118]


def test_validation():
    for bad in (dict(window=0), dict(chunk_points=0), dict(landmarks=2), dict(dim=2),
                dict(scale=-1.0), dict(max_latency_ms=0), dict(window=10.5), dict(window=True),
                dict(chunk_points=-5), dict(scale=float("inf")), dict(scale=float("nan")),
                dict(max_latency_ms=float("nan")), dict(auto_scale_factor=0.0),
                dict(latency_history=0), dict(h1_method="cech")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            analyser(**bad)
    huge = analyser(window=10**12)  # absurd window: refused at the first push, not allocated
    with pytest.raises(ValueError, match="window=1000000000000 .* GiB"):
        huge.push(np.zeros(3))
    with pytest.raises(ValueError, match="dimension >= 1"):
        analyser().push_batch(np.zeros((4, 0)))
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        analyser().push_batch(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(n, D\) array"):
        analyser().push_batch([[0.0, 1.0], [2.0]])  # ragged: mismatched dimensions
    a = analyser()
    a.push(np.zeros(3))
    with pytest.raises(ValueError, match="dimension 5 .* dimension 3"):
        a.push(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        a.push(np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="one vector"):
        a.push(np.zeros((2, 3)))


def test_ripser_and_collapse_give_the_same_windows():
    """The default H1 backend (ripser) and GUDHI collapse: same diagrams, same events."""
    rng = np.random.default_rng(5)
    stream = np.concatenate([blob(100, [0, 0], 0.03, rng), ring(100, rng),
                             blob(100, [0, 0], 0.03, rng)])
    runs = {}
    for method in ("ripser", "collapse"):
        a = analyser(h1_method=method)
        events = [e.kind for i in range(0, 300, 100) for e in a.push_batch(stream[i:i + 100])]
        runs[method] = (events, a.last_diagram)
    assert runs["ripser"][0] == runs["collapse"][0] == ["loop_birth", "loop_death"]
    for d in (0, 1):
        np.testing.assert_allclose(runs["ripser"][1][d], runs["collapse"][1][d], rtol=1e-12)
