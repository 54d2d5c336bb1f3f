"""Checkpoint files: weights checksum, atomic writes under a full disk, safe loading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lhp.errors import UserError
from lit_models.checkpoint_io import AtomicCheckpointIO
from lit_models.integrity import verify_integrity, weights_digest
from tests.conftest import REPO


def _checkpoint() -> dict:
    torch.manual_seed(0)
    return {"state_dict": {"net.w": torch.randn(64, 16), "net.b": torch.zeros(16),
                           "step": torch.tensor(3)},
            "global_step": 3, "optimizer_states": []}


def test_digest_covers_names_dtypes_shapes_and_bytes() -> None:
    sd = _checkpoint()["state_dict"]
    base = weights_digest(sd)
    assert base == weights_digest(dict(reversed(list(sd.items()))))  # order-independent
    flipped = dict(sd, **{"net.w": sd["net.w"].clone()})
    flipped["net.w"].view(torch.int32)[0, 0] ^= 1  # one bit
    variants = [flipped, {"net.v" if k == "net.w" else k: v for k, v in sd.items()},
                dict(sd, **{"net.b": sd["net.b"].double()}), dict(sd, **{"net.w": sd["net.w"].reshape(16, 64)})]
    assert len({base, *(weights_digest(v) for v in variants)}) == 5


def test_flipped_weight_byte_in_file_is_refused_on_load(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    ckpt = _checkpoint()
    (tmp_path / ".last.ckpt.k1ll3d.tmp").write_bytes(b"left by a save that was killed")
    io.save_checkpoint(ckpt, path)
    loaded = io.load_checkpoint(path)
    assert loaded["integrity"]["algorithm"] == "xxh3_128"
    assert torch.equal(loaded["state_dict"]["net.w"], ckpt["state_dict"]["net.w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp files left

    data = bytearray(path.read_bytes())
    offset = bytes(data).find(ckpt["state_dict"]["net.w"].numpy().tobytes()[:256])
    assert offset > 0
    data[offset + 100] ^= 0x01  # torch.load itself does not notice this
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"last\.ckpt is corrupt: weights checksum mismatch"):
        io.load_checkpoint(path)


def test_checkpoint_without_digest_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save(_checkpoint(), path)  # written before the digest existed
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 3
    verify_integrity({"state_dict": {}}, path)


def test_full_disk_leaves_no_partial_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    """A file size limit (what a full disk looks like to the writer) mid-save: a UserError, the
    previous checkpoint under the name is intact and no partial file remains."""
    path = tmp_path / "step000010-val_loss1.0000.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from lhp.errors import UserError
        from lit_models.checkpoint_io import AtomicCheckpointIO
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.randn(1 << 20)}}}}, {str(path)!r})
        except UserError as err:
            print("USERERROR", err)
            sys.exit(0)
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert f"cannot write checkpoint {path}" in proc.stdout and "File too large" in proc.stdout
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
