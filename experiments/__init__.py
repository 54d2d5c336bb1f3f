"""Entry points (Hydra apps) and benchmarks. Configs live in ``<repo>/conf``."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from lhp.console import quiet_known_noise
from lhp.identity import git_commit, run_label, run_slug, run_tags

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


def _hydra_overrides() -> tuple[list[str], bool]:
    """The command line's overrides of this job and whether it is a multirun trial."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], False
    hc = HydraConfig.get()
    return list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def _run_label(run_name: str) -> str:
    """``${run_label:${run_name}}``: the W&B name, e.g. ``smoke lr=5e-3 n_layer=4``."""
    return run_label(run_name, _hydra_overrides()[0])


def _run_slug(seed: object) -> str:
    """``${run_slug:${seed}}``: one directory per run identity, e.g. ``lr=5e-3/seed1``."""
    return run_slug(_hydra_overrides()[0], seed)


def _run_job_type(job_type: str | None, task_name: str) -> str:
    """``${run_job_type:${job_type},${task_name}}``: explicit (a study's variant), else
    ``sweep-trial`` in a multirun, else the task (``train``, ``evaluate``)."""
    return job_type or ("sweep-trial" if _hydra_overrides()[1] else task_name)


def _run_group(run_name: str) -> str:
    """``${run_group:${run_name}}``: the experiment; in a multirun, the sweep (its directory name),
    so one sweep's trials form one W&B group."""
    from hydra.core.hydra_config import HydraConfig

    if not _hydra_overrides()[1]:
        return run_name
    return f"{run_name}_{Path(str(HydraConfig.get().sweep.dir)).name}"


def _run_tags(tags: list, seed: object) -> list[str]:
    """``${run_tags:${tags},${seed}}``: tags + identity overrides + seed + git commit."""
    return run_tags(tags, _hydra_overrides()[0], seed, git_commit(REPO_ROOT))


for _name, _fn in (("mixed_precision", _mixed_precision), ("run_label", _run_label),
                   ("run_slug", _run_slug), ("run_job_type", _run_job_type), ("run_tags", _run_tags),
                   ("run_group", _run_group)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def split_passthrough(argv: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Split a CLI's own arguments from the train overrides after ``--`` (``sys.argv`` default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]
