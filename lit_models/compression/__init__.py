"""Weight compression and storage (H2Q, DESIGN.md idea 5).

``quaternion`` (polar form on S^3, SU(2) rotations, gain-shape quantization), ``baselines``
(fp16, int-k per channel, truncated SVD), ``store`` (chunked SQLite weight store),
``fingerprints`` (spectral and quaternion statistics of weights) and ``checkpoint_io`` (a Lightning
CheckpointIO on the store; imported on its own because it pulls in Lightning).
"""

from lit_models.compression import baselines, quaternion  # noqa: F401  (register their codecs)
from lit_models.compression.codecs import CODECS, Encoded, decode

__all__ = ["CODECS", "Encoded", "decode"]
