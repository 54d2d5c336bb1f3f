"""Platform callbacks, one per file, in the style of Lightning's own (Timer, ThroughputMonitor)."""

from callbacks.bigram_baseline import BigramBaseline
from callbacks.divergence_guard import DivergenceGuard
from callbacks.kd_curriculum import KDCurriculum
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.loggers import TensorBoardLogger
from callbacks.lr_monitor import LearningRateMonitor
from callbacks.run_metadata import RunMetadata
from callbacks.throughput import TokenThroughputMonitor
from callbacks.token_budget import TokenBudget

__all__ = ["BigramBaseline", "DivergenceGuard", "KDCurriculum", "LastCheckpoint",
           "LearningRateMonitor", "RunMetadata", "TensorBoardLogger", "TokenBudget",
           "TokenThroughputMonitor"]
