"""Quiet consoles: drop the three third-party messages every run printed, each at its source.

Only these exact messages are filtered; every other warning and log line still shows.

- Lightning's tip to install ``litlogger`` (an INFO record of its ``rank_zero`` logger);
- W&B's "The anonymous setting has no effect" (Lightning's ``WandbLogger`` always passes
  ``anonymous=None``; wandb prints it with ``termwarn(repeat=False)``, not via ``logging``);
- torch's ``FutureWarning`` that ``LeafSpec`` is deprecated, raised by Lightning's ``_pytree``.
"""

from __future__ import annotations

import importlib.abc
import logging
import re
import sys
import warnings
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
PYTREE_WARNING = "`isinstance(treespec, LeafSpec)` is deprecated"
PYTREE_MODULE = "lightning.pytorch.utilities._pytree"
WANDB_ANONYMOUS = "The anonymous setting has no effect and will be removed in a future version."
WANDB_TERM_MODULE = "wandb.errors.term"

_done = False


class _DropMessage(logging.Filter):
    """Drop the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run ``action(module)`` right after ``name`` is first imported (keeps the import lazy)."""

    def __init__(self, name: str, action: Callable[[ModuleType], None]) -> None:
        self.name, self.action = name, action

    def find_spec(self, fullname: str, path: object, target: object = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *_: None)(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _then(spec.loader.exec_module, self.action)  # type: ignore[method-assign]
                return spec
        return None


def _then(exec_module: Callable[[ModuleType], None],
          action: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    """``exec_module`` followed by ``action`` on the executed module."""

    def exec_then_act(module: ModuleType) -> None:
        exec_module(module)
        action(module)

    return exec_then_act


def _mark_wandb_anonymous_printed(term: ModuleType) -> None:
    """wandb skips a ``repeat=False`` message it has printed before: record it as printed."""
    printed = getattr(term, "_printed_messages", None)
    warn = getattr(term, "WARN_STRING", None)
    if isinstance(printed, set) and isinstance(warn, str):
        printed.add(f"{warn} {WANDB_ANONYMOUS}")


def quiet_known_noise() -> None:
    """Install the three targeted filters (idempotent; imports none of the noisy libraries)."""
    global _done
    if _done:
        return
    _done = True
    warnings.filterwarnings("ignore", message=re.escape(PYTREE_WARNING), category=FutureWarning,
                            module=re.escape(PYTREE_MODULE))
    logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER).addFilter(_DropMessage(LITLOGGER_TIP))
    if WANDB_TERM_MODULE in sys.modules:
        _mark_wandb_anonymous_printed(sys.modules[WANDB_TERM_MODULE])
    else:
        sys.meta_path.insert(0, _AfterImport(WANDB_TERM_MODULE, _mark_wandb_anonymous_printed))
