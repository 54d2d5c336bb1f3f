"""Entry points (Hydra apps) and benchmarks. Configs live in ``<repo>/conf``."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Absolute, so the apps find their configs both as `python -m experiments.x` and as console
# scripts (Hydra would resolve a relative path against the package, not the repository).
CONFIG_DIR = str(REPO_ROOT / "conf")
# conf/paths/default.yaml roots every path here, so runs work from any working directory.
os.environ.setdefault("PROJECT_ROOT", str(REPO_ROOT))


def split_passthrough(argv: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Split a CLI's own arguments from the train overrides after ``--`` (``sys.argv`` default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]
