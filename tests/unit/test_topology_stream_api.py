"""The stream API: ``analyzer.process_stream(states)`` yields typed Betti events with a
complexity measure, lazily, through the analyser's chunking; bad and short input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from lit_models.topology import BettiEvent, StreamingAnalyzer, betti_numbers


def _states(rng: np.random.Generator) -> list[np.ndarray]:
    """One compact blob, then a stream that splits into several far apart blobs, then one
    again: splits then merges at any sensible scale."""
    one = [rng.normal(size=2) * 0.05 for _ in range(300)]
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [20, 0], [0, 20], [20, 20]], float)
    many = [centers[i % 7] + rng.normal(size=2) * 0.05 for i in range(600)]
    return one + many + [rng.normal(size=2) * 0.05 for _ in range(600)]


def _analyser(**kw) -> StreamingAnalyzer:
    return StreamingAnalyzer(**{"window": 200, "chunk_points": 100, "landmarks": 40,
                                "scale": 1.0, "max_latency_ms": math.inf, **kw})


def test_events_are_typed_with_complexity_and_filterable() -> None:
    states = _states(np.random.default_rng(0))
    a = _analyser()
    events = list(a.process_stream(states))
    assert events and all(isinstance(e, BettiEvent) for e in events)
    assert {"split", "merge"} <= {e.kind for e in events}
    assert all(dataclasses.is_dataclass(e) and isinstance(e.complexity, int) for e in events)
    # complexity = total Betti number of the window the event leads to (H0 + H1)
    assert max(e.complexity for e in events) >= 7
    for e in events:
        assert e.complexity >= e.after
    rich = [e for e in _analyser().process_stream(states) if e.complexity > 5]
    assert rich and rich == [e for e in events if e.complexity > 5] and len(rich) < len(events)


def test_complexity_is_the_betti_total_of_the_new_window() -> None:
    a = _analyser()
    seen = []
    for state in _states(np.random.default_rng(1)):
        for e in a.process_stream([state], flush=False):
            seen.append((e, sum(betti_numbers(a.last_diagram, a.scale).values())))
    assert seen and all(e.complexity == total for e, total in seen)


def test_same_events_as_push_batch_and_batches_or_tensors_accepted() -> None:
    states = _states(np.random.default_rng(2))
    pushed = _analyser().push_batch(np.stack(states))
    streamed = list(_analyser().process_stream(states, flush=False))
    batches = [torch.from_numpy(np.stack(states[i:i + 37])) for i in range(0, len(states), 37)]
    batched = list(_analyser().process_stream(batches, flush=False))
    assert pushed == streamed == batched


def test_default_chunking_is_1000_points_or_10_ms() -> None:
    a = StreamingAnalyzer(window=2000)
    assert (a.chunk_points, a.max_latency_ms) == (1000, 10.0)


def test_flush_analyses_the_tail() -> None:
    states = _states(np.random.default_rng(3))[:1250]
    a = _analyser(chunk_points=1000, window=2000)
    list(a.process_stream(states))
    assert a.windows_analysed == 2 and a.points_seen == 1250
    b = _analyser(chunk_points=1000, window=2000)
    list(b.process_stream(states, flush=False))
    assert b.windows_analysed == 1


def test_nan_state_is_a_clear_error_naming_the_item() -> None:
    states = [np.zeros(3), np.ones(3), np.array([0.0, np.nan, 1.0])]
    with pytest.raises(ValueError, match=r"stream item 2: NaN or inf in row 0"):
        list(_analyser().process_stream(states))
    with pytest.raises(ValueError, match=r"stream item 1: expected a vector"):
        list(_analyser().process_stream([np.zeros(3), np.zeros((2, 2, 2))]))
    with pytest.raises(ValueError, match=r"stream item 1: .*dimension"):
        list(_analyser().process_stream([np.zeros(3), np.zeros(4)]))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_points_yield_nothing(n: int) -> None:
    a = StreamingAnalyzer(window=50, chunk_points=1, max_latency_ms=math.inf)
    assert list(a.process_stream(np.arange(2.0 * n).reshape(n, 2))) == []
