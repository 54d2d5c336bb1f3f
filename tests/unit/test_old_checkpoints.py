"""Checkpoints written before the architecture refactor still load and give the same logits.

The files under tests/data/old_checkpoints/ were written by the committed code of 4a09852
(``make_old_checkpoints.py`` there): a state-dict key renamed or a config default changed by a
later edit of ``lit_models/archs/`` makes these tests fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_models.checkpoints import load_checkpoint, load_module, platform_meta

OLD = Path(__file__).resolve().parents[1] / "data" / "old_checkpoints"


@pytest.mark.parametrize("name", ["gpt", "gpt_phm", "qtg", "indra", "fractal"])
def test_old_checkpoint_loads_with_equal_logits(name: str) -> None:
    """Loaded through the platform's loader (registered recipes, strict state dict)."""
    path = OLD / f"{name}.pt"
    ckpt = load_checkpoint(path)
    module = load_module(ckpt, platform_meta(ckpt, path), path)
    with torch.no_grad():
        logits, _ = module.net(**ckpt["inputs"])
    torch.testing.assert_close(logits, ckpt["logits"], rtol=1e-5, atol=1e-6)
