"""Config validation before any work: types and ranges of the keys users touch, key named.

One table, checked by :func:`check_config` at the start of every entry point that trains or
evaluates, so ``trainer.max_steps=abc`` ends in one line naming the key instead of a
``TypeError`` deep inside Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lhp.errors import UserError

Check = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(low: int, *also: Any) -> tuple[Check, str]:
    extra = "".join(f" or {a!r}" for a in also)
    return (lambda v: (_int(v) and v >= low) or v in also), f"an integer >= {low}{extra}"


def positive_number() -> tuple[Check, str]:
    return (lambda v: _num(v) and v > 0), "a finite number > 0"


def fraction_or_count() -> tuple[Check, str]:
    return ((lambda v: v is None or (_int(v) and v >= 0) or (_num(v) and 0.0 <= v <= 1.0)),
            "null, an integer >= 0 (batches) or a fraction in [0, 1]")


def number_in(low: float, high: float, nullable: bool = False) -> tuple[Check, str]:
    return ((lambda v: (nullable and v is None) or (_num(v) and low <= v <= high)),
            f"{'null or ' if nullable else ''}a number in [{low}, {high}]")


def _devices(v: Any) -> bool:
    return v == "auto" or (_int(v) and (v >= 1 or v == -1)) or (
        isinstance(v, list | tuple) and len(v) > 0 and all(_int(d) and d >= 0 for d in v))


def _path(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v != "" and "\x00" not in v)


RULES: dict[str, tuple[Check, str]] = {
    "trainer.max_steps": ((lambda v: v == -1 or (_int(v) and v >= 1)),
                          "an integer >= 1, or -1 for no step limit (0 would train nothing)"),
    "trainer.max_epochs": ((lambda v: v is None or v == -1 or (_int(v) and v >= 1)),
                           "null, -1 or an integer >= 1"),
    "trainer.devices": (_devices, "'auto', an integer >= 1 (or -1) or a list of device ids"),
    "trainer.num_nodes": int_at_least(1),
    "trainer.accumulate_grad_batches": int_at_least(1),
    "trainer.log_every_n_steps": int_at_least(1),
    "trainer.num_sanity_val_steps": int_at_least(-1),
    "trainer.gradient_clip_val": number_in(0.0, math.inf, nullable=True),
    "trainer.val_check_interval": ((lambda v: v is None or (_int(v) and v >= 1)
                                    or (_num(v) and 0.0 < v <= 1.0)),
                                   "null, an integer >= 1 (steps) or a fraction in (0, 1]"),
    "trainer.limit_train_batches": fraction_or_count(),
    "trainer.limit_val_batches": fraction_or_count(),
    "trainer.limit_test_batches": fraction_or_count(),
    "data.batch_size": int_at_least(1),
    "data.eval_batch_size": int_at_least(1),
    "data.block_size": int_at_least(2),
    "data.num_workers": int_at_least(0),
    "model.optimizer.lr": positive_number(),
    "model.optimizer.weight_decay": number_in(0.0, math.inf),
    "model.optimizer.eps": positive_number(),
    "model.scheduler.warmup_steps": int_at_least(0),
    "model.scheduler.min_lr_ratio": number_in(0.0, 1.0),
    "callbacks.token_budget.max_tokens": int_at_least(1, None),
    "callbacks.token_budget.max_flops": ((lambda v: v is None or (_num(v) and v > 0)),
                                         "null or a finite number > 0"),
    "callbacks.token_budget.fit_schedule": ((lambda v: isinstance(v, bool)), "true or false"),
    "seed": int_at_least(0, None),
    "ckpt_path": (_path, "null or a file path"),
    "max_new_tokens": int_at_least(0),  # generate
    "num_samples": int_at_least(1),
    "temperature": number_in(0.0, math.inf),
    "top_k": int_at_least(1, None),
    "paths.log_dir": (_path, "a directory path"),
    "paths.output_dir": (_path, "a directory path"),
}


def to_plain(value: Any) -> Any:
    """Hydra hands over DictConfigs/ListConfigs; checkpoints and hparams need plain containers."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _get(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_config(cfg: Mapping[str, Any], rules: Mapping[str, tuple[Check, str]] = RULES) -> None:
    """Raise one UserError naming the first key whose value breaks its rule (absent keys pass).

    ``cfg`` is a resolved plain mapping (``OmegaConf.to_container(cfg, resolve=True)``).
    """
    for key, (ok, expected) in rules.items():
        present, value = _get(cfg, key)
        if present and not ok(value):
            raise UserError(f"config key {key}: expected {expected}, got {value!r} "
                            f"({type(value).__name__}); fix it with {key}=<value>")
