"""``model.compile``: ``torch.compile`` of a recipe's network for training and evaluation steps.

The compiled callable is kept beside the network, not in place of it: ``self.net`` stays the
plain module, so checkpoints keep their keys (no ``_orig_mod.`` prefix), generation with the
KV cache (a new ``start_pos`` every step) and forward hooks run eagerly, and the compiled
wrapper is built lazily at the first step, after any ``configure_model`` sharding. Compilation
itself is lazy too: the first step traces and compiles (tens of seconds on CPU, see
``experiments/bench/compile.py``), later steps reuse the graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lhp.errors import UserError

DEFAULT_BACKEND = "inductor"


def compile_setting(value: Any, key: str = "model.compile") -> str | None:
    """The backend ``value`` asks for: false/null -> None (eager), true -> ``inductor``, or the
    name of a registered ``torch.compile`` backend (e.g. ``aot_eager``: tracing without code
    generation); anything else is a UserError naming ``key``."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_BACKEND
    backends = set(torch._dynamo.list_backends(exclude_tags=())) | {DEFAULT_BACKEND}
    if isinstance(value, str) and value in backends:
        return value
    raise UserError(f"{key} must be true, false or a torch.compile backend name "
                    f"({', '.join(sorted(backends))}), got {value!r}")


def compile_network(module: nn.Module, backend: str = DEFAULT_BACKEND) -> Callable[..., Any]:
    """``torch.compile(module)`` (lazy: nothing is traced until the first call). The module itself
    is left as it is; call the returned wrapper in the steps that should run compiled."""
    return torch.compile(module, backend=backend)
