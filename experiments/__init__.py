"""Entry points (Hydra apps) and benchmarks. Configs live in ``<repo>/conf``."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from lhp.console import quiet_known_noise

quiet_known_noise()  # before Lightning, W&B or torch print their three known, useless messages

REPO_ROOT = Path(__file__).resolve().parent.parent
# Absolute, so the apps find their configs both as `python -m experiments.x` and as console
# scripts (Hydra would resolve a relative path against the package, not the repository).
CONFIG_DIR = str(REPO_ROOT / "conf")
# conf/paths/default.yaml roots every path here, so runs work from any working directory.
os.environ.setdefault("PROJECT_ROOT", str(REPO_ROOT))


def _mixed_precision() -> str:
    """``${mixed_precision:}`` in configs: bf16-mixed on a GPU with bf16, 16-mixed on older GPUs
    (e.g. an RTX 2080), 32-true on CPU (CPU autocast is slower than float32 here)."""
    import torch  # lazily: only when a config using it is resolved

    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


if not OmegaConf.has_resolver("mixed_precision"):
    OmegaConf.register_new_resolver("mixed_precision", _mixed_precision)


def split_passthrough(argv: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Split a CLI's own arguments from the train overrides after ``--`` (``sys.argv`` default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]
