"""Run identity: what was trained, as a name, a directory and a comparison of configs.

A run is identified by its experiment (``run_name``), the overrides that change what is trained,
and its seed. Execution-only keys (how long, how often to validate or log, where to write, which
loggers, how many devices, how to resume) are left out: changing them continues the same run.
The list below is the documented one (docs/compare.md).
"""

from __future__ import annotations

import fnmatch
import functools
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Keys (dotted, fnmatch patterns) that do not change what is trained.
EXECUTION_ONLY: tuple[str, ...] = (
    "experiment", "seed", "run_name", "task_name", "group", "job_type", "tags",
    "resume", "ckpt_path", "train", "test", "log_checkpoint_artifact", "optimized_metric",
    "paths", "paths.*", "hydra", "hydra.*", "logger", "logger.*", "extras", "extras.*",
    "debug", "local", "hparams_search",
    "trainer.max_steps", "trainer.max_time", "trainer.max_epochs", "trainer.min_epochs",
    "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.log_every_n_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.default_root_dir",
    "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy",
    "trainer.plugins", "trainer.plugins.*",
    "data.num_workers", "data.pin_memory", "data.eval_batch_size", "data.mock_path",
    "callbacks.model_checkpoint.*", "callbacks.last_checkpoint.*", "callbacks.divergence_guard.*",
    "callbacks.rich_progress_bar.*", "callbacks.tqdm_progress_bar.*", "callbacks.lr_monitor.*",
    "callbacks.throughput.*", "callbacks.token_budget.*", "callbacks.bigram_baseline.*",
    "callbacks.vram_budget.*", "callbacks.topology_metrics.*", "callbacks.rank_consistency.*",
    "model.compile",  # torch.compile: same numbers, another speed
)

MAX_TAG = 64
_OVERRIDE = re.compile(r"^(?:\+\+|\+|~)?([^=]+)(?:=(.*))?$")


def execution_only(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in EXECUTION_ONLY)


def identity_overrides(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, value)`` of the command-line overrides that change what is trained, sorted."""
    out = {}
    for text in overrides:
        match = _OVERRIDE.match(text.strip())
        if not match:
            continue
        key, value = match.group(1), match.group(2)
        if not execution_only(key):
            out[key] = "null" if value is None else value  # ~key deletes it
    return sorted(out.items())


def short_keys(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The last component of each key (``model.optimizer.lr`` -> ``lr``), longer where two
    keys would otherwise read the same."""
    depth = {key: 1 for key, _ in pairs}
    while True:
        names = {key: ".".join(key.split(".")[-depth[key]:]) for key, _ in pairs}
        clashes = {k for k in names if list(names.values()).count(names[k]) > 1
                   and depth[k] < len(k.split("."))}
        if not clashes:
            return [(names[key], value) for key, value in pairs]
        for key in clashes:
            depth[key] += 1


def _labelled(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """Identity overrides with short keys, sorted by them (stable whatever the CLI order)."""
    return sorted(short_keys(identity_overrides(overrides)))


def run_label(run_name: str, overrides: Iterable[str]) -> str:
    """Human-readable name: ``smoke lr=5e-3 n_layer=4`` (the W&B run name)."""
    parts = [f"{k}={v}" for k, v in _labelled(overrides)]
    return " ".join([run_name, *parts])


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "_"


def run_slug(overrides: Iterable[str], seed: Any) -> str:
    """Directory below ``<log_dir>/<task>/<run_name>/`` for one run identity:
    ``lr=5e-3,n_layer=4/seed1`` (``default/seed1`` with no identity overrides)."""
    pairs = _labelled(overrides)
    name = ",".join(f"{k}={v}" for k, v in pairs) or "default"
    if len(name) > 120:  # keep paths short: the full list is in the config and the tags
        import hashlib

        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{_safe(name)}/seed{seed}"


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]
                       ) -> list[tuple[str, Any, Any]]:
    """``(key, stored, requested)`` for every key outside the execution-only list whose value
    differs. A requested ``null`` against a stored value is a derived fill (e.g.
    ``model.arch_config.vocab_size`` from the tokenizer), not a difference."""
    a, b = flatten(stored), flatten(requested)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if execution_only(key):
            continue
        old, new = a.get(key), b.get(key)
        if new is None and key in a and key in b:
            continue
        if _norm(old) != _norm(new):
            diffs.append((key, old, new))
    return diffs


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def git_commit(repo: Path) -> str | None:
    """Commit of the checkout at ``repo`` (suffixed ``-dirty`` with uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=5).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(tags: Iterable[str], overrides: Iterable[str], seed: Any, commit: str | None) -> list[str]:
    """The experiment's tags, then ``key=value`` per identity override, ``seed:<n>``,
    ``git:<short commit>`` and ``dirty`` when the tree had uncommitted changes."""
    out = [str(t) for t in tags or []]
    out += [f"{k}={v}" for k, v in _labelled(overrides)]
    out.append(f"seed:{seed}")
    if commit:
        out.append(f"git:{commit[:7]}")
        if commit.endswith("-dirty"):
            out.append("dirty")
    out = [t if len(t) <= MAX_TAG else t[:MAX_TAG - 3] + "..." for t in out]  # W&B: 1-64 chars
    return list(dict.fromkeys(t for t in out if t))  # unique, in order
