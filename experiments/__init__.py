"""Entry points (Hydra apps) and benchmarks. Configs live in ``<repo>/conf``."""

import os
from pathlib import Path

# conf/paths/default.yaml roots every path here, so runs work from any working directory.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent.parent))
