"""Topology engine (TCS): persistence of point clouds, diagram statistics and distances,
Betti-change events, a streaming window analyser (with ``process_stream``) and differentiable
persistence losses; Hodge Laplacians, smooth Betti numbers, quantum walks and sheaf diffusion
(TCS v8/v9); a 3-tier cache of diagrams (``TopologyCache``).

Built on GUDHI (complexes, persistence, bottleneck), giotto-ph (Rips), ``gudhi.wasserstein``
(POT), scipy (kd-trees, MST) and torch (the CUDA H0 path). No Lightning import: callbacks and architectures wrap these functions.
"""

from lit_models.topology.cache import TopologyCache
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
from lit_models.topology.hodge import (
    SimplicialComplex,
    complex_from_simplices,
    hodge_betti,
    hodge_laplacian,
    hodge_laplacian_torch,
    rips_complex,
    smooth_betti,
)
from lit_models.topology.mst import euclidean_mst, euclidean_mst_torch
from lit_models.topology.persistence import METHODS, choose_method, compute_persistence, h0_device
from lit_models.topology.quantum_walk import chebyshev_walk, eig_walk, mixing_time, spectral_gap
from lit_models.topology.sheaf import SheafDiffusion, knn_graph, sheaf_laplacian
from lit_models.topology.streaming import StreamingAnalyzer

__all__ = [
    "METHODS",
    "BettiEvent",
    "Diagram",
    "SheafDiffusion",
    "SimplicialComplex",
    "StreamingAnalyzer",
    "TopologyCache",
    "betti_curve",
    "betti_events",
    "betti_numbers",
    "betti_target_loss",
    "bottleneck",
    "chebyshev_walk",
    "choose_method",
    "complex_from_simplices",
    "compute_persistence",
    "diagram_torch",
    "eig_walk",
    "empty_diagram",
    "h0_device",
    "euclidean_mst",
    "euclidean_mst_torch",
    "hodge_betti",
    "hodge_laplacian",
    "hodge_laplacian_torch",
    "knn_graph",
    "mixing_time",
    "persistence_entropy",
    "rips_complex",
    "sheaf_laplacian",
    "smooth_betti",
    "spectral_gap",
    "total_persistence",
    "total_persistence_loss",
    "wasserstein",
    "wasserstein_loss",
]
