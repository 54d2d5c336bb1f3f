"""Betti-change events between two diagrams: the "pragmatic cobordism" of the TCS design.

Instead of a topological field theory, compare the Betti numbers of two consecutive states
(e.g. two windows of a stream) at one scale and name the change:

* ``split``: beta_0 goes up (a cluster broke apart), ``merge``: beta_0 goes down;
* ``loop_birth``: beta_1 goes up, ``loop_death``: beta_1 goes down.

``magnitude`` is the absolute change. Dimensions above 1 are not reported; H1 is compared only
when both diagrams computed it.
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


def betti_events(prev: Diagram, curr: Diagram, scale: float, position: int) -> list[BettiEvent]:
    """Events turning ``prev`` into ``curr`` at ``scale`` (empty list when nothing changed)."""
    b_prev, b_curr = betti_numbers(prev, scale), betti_numbers(curr, scale)
    events = []
    for dim, (up, down) in _KINDS.items():
        if dim not in b_prev or dim not in b_curr:
            continue
        change = b_curr[dim] - b_prev[dim]
        if change:
            events.append(BettiEvent(kind=up if change > 0 else down, position=position,
                                     scale=float(scale), magnitude=abs(change), dim=dim,
                                     before=b_prev[dim], after=b_curr[dim]))
    return events
