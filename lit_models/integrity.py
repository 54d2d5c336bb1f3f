"""Weights checksum stored in every checkpoint, checked on load.

``AtomicCheckpointIO`` stores ``checkpoint["integrity"] = {"algorithm": "xxh3_128",
"state_dict": weights_digest(checkpoint["state_dict"])}`` and verifies it when loading, so a
flipped bit on disk is an error instead of silently different weights. Checkpoints written
before the digest existed carry no ``integrity`` block and load as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash

from lhp.errors import UserError

ALGORITHM = "xxh3_128"
INTEGRITY_KEY = "integrity"


def weights_digest(state_dict: Mapping[str, Any]) -> str:
    """xxh3-128 hex digest over every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = xxhash.xxh3_128()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        h.update(f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0".encode())
        h.update(data.numpy())
    return h.hexdigest()


def integrity_block(state_dict: Mapping[str, Any]) -> dict[str, str]:
    """What ``AtomicCheckpointIO`` stores under ``checkpoint["integrity"]``."""
    return {"algorithm": ALGORITHM, "state_dict": weights_digest(state_dict)}


def verify_integrity(checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """Raise ``UserError`` naming ``path`` if the stored weights digest does not match.

    A checkpoint without an ``integrity`` block (written before it existed) passes unchecked.
    """
    block = checkpoint.get(INTEGRITY_KEY)
    if block is None:
        return
    if not isinstance(block, Mapping) or block.get("algorithm") != ALGORITHM \
            or not isinstance(block.get("state_dict"), str):
        raise UserError(f"checkpoint {path} has an unreadable integrity block {block!r} "
                        f"(expected algorithm {ALGORITHM!r} and a hex digest): the file is corrupt "
                        "or was not written by this platform; use another checkpoint")
    actual = weights_digest(checkpoint.get("state_dict") or {})
    if actual != block["state_dict"]:
        raise UserError(f"checkpoint {path} is corrupt: weights checksum mismatch (stored "
                        f"{block['state_dict']}, computed {actual}); restore it from a copy or use "
                        "another checkpoint of the run (e.g. the best or an earlier last.ckpt)")
