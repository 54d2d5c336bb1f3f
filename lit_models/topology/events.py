"""Betti-change events between two diagrams: the "pragmatic cobordism" of the TCS design.

Instead of a topological field theory, compare the Betti numbers of two consecutive states
(e.g. two windows of a stream) at one scale and name the change:

* ``split``: beta_0 goes up (a cluster broke apart), ``merge``: beta_0 goes down;
* ``loop_birth``: beta_1 goes up, ``loop_death``: beta_1 goes down.

``magnitude`` is the absolute change. Dimensions above 1 are not reported; H1 is compared only
when both diagrams computed it.

``complexity`` is the *total Betti number* of the new state at the event's scale: the sum of
its Betti numbers over every dimension its diagram computed (beta_0 + beta_1 for the streaming
analyser), i.e. the number of clusters plus independent loops alive at that scale, the
topological complexity measure of Bianchini & Scarselli (2014). It describes the state the
event leads to, so all events of one analysis share it; filter on it to keep the events of
structurally rich windows: ``(e for e in analyzer.process_stream(states) if e.complexity > 5)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lit_models.topology.diagrams import Diagram, betti_numbers

EventKind = Literal["split", "merge", "loop_birth", "loop_death"]
_KINDS: dict[int, tuple[EventKind, EventKind]] = {0: ("split", "merge"),
                                                  1: ("loop_birth", "loop_death")}


@dataclass(frozen=True)
class BettiEvent:
    """A change of one Betti number at ``scale``, observed at stream ``position``."""

    kind: EventKind
    position: int
    scale: float
    magnitude: int
    dim: int
    before: int = 0
    after: int = 0
    complexity: int = 0  # total Betti number of the new state at ``scale`` (module docstring)


def betti_events(prev: Diagram, curr: Diagram, scale: float, position: int) -> list[BettiEvent]:
    """Events turning ``prev`` into ``curr`` at ``scale`` (empty list when nothing changed)."""
    b_prev, b_curr = betti_numbers(prev, scale), betti_numbers(curr, scale)
    events = []
    complexity = int(sum(b_curr.values()))
    for dim, (up, down) in _KINDS.items():
        if dim not in b_prev or dim not in b_curr:
            continue
        change = b_curr[dim] - b_prev[dim]
        if change:
            events.append(BettiEvent(kind=up if change > 0 else down, position=position,
                                     scale=float(scale), magnitude=abs(change), dim=dim,
                                     before=b_prev[dim], after=b_curr[dim],
                                     complexity=complexity))
    return events
