"""Architecture registry: a name maps to its (Config dataclass, nn.Module) pair.

A token architecture (all of them build on ``lit_models.archs.gpt.GPT``) is a config dataclass
(validated in ``__post_init__``, with ``activation_bytes(b, s, elem)``: the bytes its forward
saves for backward, which the VRAM budget reads) and a module that takes only its config and
implements:

* ``forward(idx, start_pos=None, teacher=None) -> (logits, aux_losses)``: ``aux_losses`` is a
  dict of named scalar regularizer terms (empty for plain models); the recipe adds
  ``lambda_k * term_k`` to the cross-entropy and logs each as ``train/loss_<k>``. ``teacher``,
  a :class:`TeacherSignal` that only a distillation recipe passes (in training), lets an
  architecture return terms that align it with the teacher (Indra's ``phase`` and ``mag``);
  others ignore it.
* ``diagnostics(idx, mask) -> dict`` of scalars to monitor, without gradient (empty for most);
* ``setup_kv_cache`` / ``clear_kv_cache`` for generation;
* ``activation_checkpointing`` in its config: recompute each block in backward;
* ``shard_unit``, given to :func:`register`: the block class that fully-sharded data parallel
  (``trainer=fsdp``) wraps one by one, so only one block's full parameters exist at a time.

The LightningModule builds it from the name and a plain dict of config values, so checkpoints
hold only primitives and load without Hydra.

Coordinate architectures (position -> symbol, e.g. the fractal decoder) follow the same
(Config, Module) contract but not the token one, so they live in their own table,
``COORDINATE_ARCHITECTURES``, selected with ``table=``; token-only code and tests iterate
``ARCHITECTURES`` alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn


class TeacherSignal(NamedTuple):
    """A distillation teacher's view of the batch: its logits (B, T, V) and the positions that
    count (B, T), ``labels != -100``."""

    logits: torch.Tensor
    mask: torch.Tensor


Table = dict[str, tuple[type, type[nn.Module]]]
ARCHITECTURES: Table = {}
COORDINATE_ARCHITECTURES: Table = {}
SHARD_UNITS: dict[str, type[nn.Module]] = {}  # architecture name -> its block class (FSDP unit)


def register(name: str, config_cls: type, table: Table = ARCHITECTURES,
             shard_unit: type[nn.Module] | None = None
             ) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@register("gpt", GPTConfig, shard_unit=Block)`` on the module class."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config for architecture {name!r} must be a dataclass")
    if shard_unit is not None:
        SHARD_UNITS[name] = shard_unit

    def wrap(module_cls: type[nn.Module]) -> type[nn.Module]:
        if name in table and table[name][1] is not module_cls:
            raise ValueError(f"architecture {name!r} is already registered")
        table[name] = (config_cls, module_cls)
        return module_cls

    return wrap


def _lookup(name: str, table: Table = ARCHITECTURES) -> tuple[type, type[nn.Module]]:
    if name not in table:
        raise KeyError(f"unknown architecture {name!r}; registered: {sorted(table)}")
    return table[name]


def make_config(name: str, values: Mapping[str, Any], table: Table = ARCHITECTURES) -> Any:
    """Build (and so validate) the config of architecture ``name`` from plain values."""
    config_cls, _ = _lookup(name, table)
    known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in model.arch_config for architecture {name!r}; "
            f"expected some of {sorted(known)}"
        )
    return config_cls(**values)


def build_arch(name: str, values: Mapping[str, Any], table: Table = ARCHITECTURES) -> nn.Module:
    """Instantiate architecture ``name`` from a plain dict of its config values."""
    _, module_cls = _lookup(name, table)
    return module_cls(make_config(name, values, table))


def shard_unit(name: str) -> type[nn.Module] | None:
    """The block class of architecture ``name`` that FSDP shards one by one (None: not named)."""
    return SHARD_UNITS.get(name)
