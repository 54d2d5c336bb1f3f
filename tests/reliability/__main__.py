"""``python -m tests.reliability``: the fuzz summary, then the kill-test figures (last line).

``python -m tests.reliability fuzz`` or ``... kill`` runs one of the two.
"""

import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.reliability import kill, runner  # noqa: E402

which = sys.argv[1:] or ["fuzz", "kill"]
status = 0
if "fuzz" in which:
    status |= runner.main()
if "kill" in which:
    status |= kill.main()
sys.exit(status)
