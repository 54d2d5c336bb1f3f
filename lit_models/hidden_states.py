"""Hidden states of any token architecture, by forward hooks on named modules.

Architectures are not changed to expose their activations: the repeated blocks are found by
structure (the longest ``nn.ModuleList`` whose children share one class: ``net.blocks`` of the
platform's GPT, ``transformer.h`` of a Hugging Face GPT-2, ``model.layers`` of a Llama), and a
layer is chosen by its index in that list or by its module name (``fnmatch`` patterns allowed).
Used by ``StatefulEmbedder`` and the ``TopologyMetrics`` callback.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def block_names(model: nn.Module) -> list[str]:
    """Module names of the repeated blocks of ``model`` (the longest homogeneous ModuleList)."""
    best: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) == 1 and len(module) > len(best):
            prefix = f"{name}." if name else ""
            best = [f"{prefix}{i}" for i in range(len(module))]
    return best


def resolve_layers(model: nn.Module, layers: Sequence[int | str]) -> list[str]:
    """Module names for ``layers``: ints index the blocks (negative from the end), strings are
    module names or ``fnmatch`` patterns (each must match at least one module).

    Raises ``ValueError`` naming the bad entry and listing the blocks (and how to see all names).
    """
    blocks = block_names(model)
    modules = dict(model.named_modules())
    out: list[str] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int | str):
            raise ValueError(f"layer {layer!r} must be an int (block index) or a module name")
        if isinstance(layer, int):
            if not blocks:
                raise ValueError(f"layer {layer}: {type(model).__name__} has no repeated blocks "
                                 "(ModuleList) to index; give a module name instead")
            if not -len(blocks) <= layer < len(blocks):
                raise ValueError(f"layer index {layer} is out of range: the model has "
                                 f"{len(blocks)} blocks {blocks}")
            matched = [blocks[layer]]
        elif layer in modules and layer:
            matched = [layer]
        else:
            matched = [n for n in modules if n and fnmatch.fnmatchcase(n, layer)]
            if not matched:
                raise ValueError(
                    f"layer {layer!r} matches no module of {type(model).__name__}; its blocks are "
                    f"{blocks or '(none found)'} (all names: [n for n, _ in "
                    "model.named_modules()])")
        out += [m for m in matched if m not in out]
    return out


def _first_tensor(output: object) -> torch.Tensor:
    """A block's output: a tensor, or the first element of a tuple (Hugging Face blocks)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read a hidden state from a module output of type {type(output)}")


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of ``model`` stores the (detached) output of each named
    module in the yielded dict (the last call wins); hooks are removed on exit."""
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        if name not in modules:
            raise ValueError(f"no module named {name!r} in {type(model).__name__}")

        def hook(_module: nn.Module, _inputs: object, output: object, name: str = name) -> None:
            store[name] = _first_tensor(output).detach()

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
