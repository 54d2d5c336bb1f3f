"""Topology engine (TCS): persistence of point clouds, diagram statistics and distances,
Betti-change events, a streaming window analyser and differentiable persistence losses.

Built on GUDHI (complexes, persistence, bottleneck), ``gudhi.wasserstein`` (POT) and scipy
(kd-trees, MST). No Lightning import: callbacks and architectures wrap these functions.
"""

from lit_models.topology.diagrams import (
    Diagram,
    betti_curve,
    betti_numbers,
    bottleneck,
    empty_diagram,
    persistence_entropy,
    total_persistence,
    wasserstein,
)
from lit_models.topology.differentiable import (
    betti_target_loss,
    diagram_torch,
    total_persistence_loss,
    wasserstein_loss,
)
from lit_models.topology.events import BettiEvent, betti_events
from lit_models.topology.mst import euclidean_mst
from lit_models.topology.persistence import METHODS, choose_method, compute_persistence
from lit_models.topology.streaming import StreamingAnalyzer

__all__ = [
    "METHODS",
    "BettiEvent",
    "Diagram",
    "StreamingAnalyzer",
    "betti_curve",
    "betti_events",
    "betti_numbers",
    "betti_target_loss",
    "bottleneck",
    "choose_method",
    "compute_persistence",
    "diagram_torch",
    "empty_diagram",
    "euclidean_mst",
    "persistence_entropy",
    "total_persistence",
    "total_persistence_loss",
    "wasserstein",
    "wasserstein_loss",
]
