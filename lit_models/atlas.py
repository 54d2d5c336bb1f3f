"""Fractal Atlas library: one frozen core + one small key per book, on disk.

A library is a directory::

    core.safetensors       the core's weights (every tensor but the key table), fp32, with
                           metadata: arch config, character vocabulary, their hashes
    keys/<id>.safetensors  one key z per book (key_dim floats), with metadata naming the core
                           (sha256 of core.safetensors), its config hash and vocabulary hash
    index.json             books: id, title, source, length, charset hash, key dim, accuracy,
                           bpc, sha256 of the text, key file; plus the core's hashes

Every file is written atomically (temp file + ``os.replace``); ``add_book`` allocates the id
and rewrites the index under an exclusive ``fcntl`` lock on ``.lock``, so concurrent writers
never lose or corrupt an entry. A key is loaded only after its core/config/vocabulary hashes
match the library's core, and a corrupted or truncated file is reported with its path.

Spectral normalization (V7/V8) is a training-time parametrization: the library stores the
normalized weights themselves, and cores are rebuilt with ``spectral_norm=False``.

Also here: full-book sweeps (accuracy, bits per character), fitting a new book's key against a
frozen core, fp16/int8 core files, and the two-part code (the text entropy-coded with the
model's probabilities, ``constriction`` range coder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn.utils import parametrize

from datamodules.book_coords import CharVocab, charset_hash, positions
from datamodules.files import write_atomic
from lhp.errors import UserError
from lit_models.archs.fractal import FractalConfig, FractalDecoder

FORMAT = "fractal-atlas/1"
CORE_FILE = "core.safetensors"
INDEX_FILE = "index.json"
KEYS_DIR = "keys"
LOCK_FILE = ".lock"
KEY_TENSOR = "z"
RESIDUAL_MAGIC = b"FAR1"
# Keys of the arch config that do not change what a trained core computes.
TRAINING_ONLY = ("num_books", "spectral_norm", "depth_warmup_steps")


class AtlasError(UserError):
    """A bad library, core, key or book; the message names the file and what was expected."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_sha256(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def inference_config(config: dict[str, Any] | FractalConfig) -> dict[str, Any]:
    """The config a library core is rebuilt with: one key slot, parametrizations baked in."""
    values = dataclasses.asdict(config) if isinstance(config, FractalConfig) else dict(config)
    return {**values, "num_books": 1, "spectral_norm": False, "depth_warmup_steps": 0}


def config_hash(config: dict[str, Any] | FractalConfig) -> str:
    values = {k: v for k, v in inference_config(config).items() if k not in TRAINING_ONLY}
    return sha256_bytes(json.dumps(values, sort_keys=True).encode())


# ----------------------------------------------------------------------------- core weights


def core_state(net: FractalDecoder) -> dict[str, torch.Tensor]:
    """The core's tensors (no key table), with spectral normalization baked into the weights."""
    was_training = net.training
    net.eval()  # spectral norm: eval mode uses the stored power-iteration vectors, no update
    try:
        with torch.no_grad():
            state = {k: v for k, v in net.state_dict().items()
                     if not k.startswith("keys.") and ".parametrizations." not in k}
            for name, module in net.named_modules():
                if parametrize.is_parametrized(module, "weight"):
                    state[f"{name}.weight"] = module.weight
    finally:
        net.train(was_training)
    return {k: v.detach().float().cpu().contiguous() for k, v in sorted(state.items())}


def build_core(config: dict[str, Any], state: dict[str, torch.Tensor]) -> FractalDecoder:
    """A frozen, eval-mode decoder from a core's config and tensors (any float dtype)."""
    net = FractalDecoder(FractalConfig(**inference_config(config)))
    missing, unexpected = net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.startswith("keys.")]
    if missing or unexpected:
        raise AtlasError(f"core tensors do not match the config: missing {missing}, unexpected {unexpected}")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def quantize_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices: symmetric int8 per output row with an fp16 scale (``<name>.scale``); vectors fp16."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if t.dim() >= 2:
            scale = (t.abs().amax(dim=tuple(range(1, t.dim())), keepdim=True) / 127.0)
            scale = scale.clamp(min=1e-8).half()
            out[name] = torch.round(t / scale.float()).clamp(-127, 127).to(torch.int8)
            out[f"{name}.scale"] = scale
        else:
            out[name] = t.half()
    return out


def dequantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float32 tensors from an fp32/fp16 or int8 (+ ``.scale``) state."""
    out = {}
    for name, t in state.items():
        if name.endswith(".scale"):
            continue
        scale = state.get(f"{name}.scale")
        out[name] = t.float() * scale.float() if scale is not None else t.float()
    return out


def core_metadata(config: dict[str, Any], charset: Sequence[str]) -> dict[str, str]:
    return {"format": FORMAT, "arch": "fractal", "config": json.dumps(config, sort_keys=True),
            "charset": json.dumps(list(charset)), "config_hash": config_hash(config),
            "charset_hash": charset_hash(charset)}


def save_core_file(path: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                   charset: Sequence[str]) -> Path:
    data = st_save(state, metadata=core_metadata(config, charset))
    return write_atomic(path, lambda fh: fh.write(data))


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    """Tensors, metadata and raw bytes of a safetensors file; corruption is an AtlasError."""
    path = Path(path)
    if not path.is_file():
        raise AtlasError(f"{what} not found: {path}")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        (n,) = struct.unpack("<Q", raw[:8])
        metadata = json.loads(raw[8:8 + n]).get("__metadata__") or {}
    except (SafetensorError, struct.error, ValueError, json.JSONDecodeError) as err:
        raise AtlasError(f"{path}: corrupted or truncated {what} ({err})") from err
    return tensors, metadata, raw


def load_core_file(path: str | Path) -> tuple[FractalDecoder, list[str], dict[str, str]]:
    """(decoder, charset, metadata) from a core file (fp32, fp16 or int8)."""
    tensors, meta, _ = read_safetensors(path, "core file")
    if meta.get("format") != FORMAT:
        raise AtlasError(f"{path}: not a {FORMAT} core (format {meta.get('format')!r})")
    try:
        config, charset = json.loads(meta["config"]), json.loads(meta["charset"])
    except (KeyError, json.JSONDecodeError) as err:
        raise AtlasError(f"{path}: core metadata lacks a readable config/charset ({err})") from err
    if config_hash(config) != meta.get("config_hash") or charset_hash(charset) != meta.get("charset_hash"):
        raise AtlasError(f"{path}: core metadata hashes do not match its config/charset (edited?)")
    return build_core(config, dequantize(tensors)), charset, meta


def save_key_file(path: str | Path, z: torch.Tensor, meta: dict[str, str],
                  dtype: torch.dtype = torch.float32) -> Path:
    data = st_save({KEY_TENSOR: z.detach().to(dtype).contiguous().cpu()}, metadata=meta)
    return write_atomic(path, lambda fh: fh.write(data))


# ----------------------------------------------------------------------------- sweeps


@torch.no_grad()
def iter_logits(net: FractalDecoder, n_chars: int, *, book_index: int | None = None,
                z: torch.Tensor | None = None, batch_size: int = 8192
                ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, logits)`` over every position of an ``n_chars`` book, in order (float32)."""
    device = next(net.parameters()).device
    coords = positions(n_chars)
    for start in range(0, n_chars, batch_size):
        x = coords[start:start + batch_size].to(device)
        book = None if book_index is None else torch.full_like(x, book_index, dtype=torch.long)
        logits, _ = net(x, book, z=None if z is None else z.to(device))
        yield start, logits.float().cpu()


def evaluate_text(net: FractalDecoder, ids: torch.Tensor, *, book_index: int | None = None,
                  z: torch.Tensor | None = None, batch_size: int = 8192) -> dict[str, Any]:
    """Full-book sweep: accuracy, wrong characters, bits per character, predictions."""
    preds, correct, nll = [], [], 0.0
    for start, logits in iter_logits(net, len(ids), book_index=book_index, z=z, batch_size=batch_size):
        target = ids[start:start + len(logits)]
        pred = logits.argmax(-1)
        preds.append(pred)
        correct.append(pred == target)
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
    pred, ok = torch.cat(preds), torch.cat(correct)
    n = len(ids)
    return {"acc": float(ok.float().mean()), "wrong": int(n - ok.sum()), "bpc": nll / n / math.log(2),
            "loss": nll / n, "pred": pred, "correct": ok}


def fit_key(net: FractalDecoder, ids: torch.Tensor, *, steps: int = 2000, lr: float = 1e-2,
            batch_size: int = 4096, seed: int = 0, init: torch.Tensor | None = None,
            min_lr_ratio: float = 0.1, progress: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Train only a new key z for the book ``ids`` against the frozen core ``net``.

    Every core parameter has ``requires_grad=False`` and only ``z`` is given to the optimizer
    (Adam, cosine decay), so the core is bitwise unchanged. ``progress`` shows a progress bar
    with ETA over the steps. Returns ``(z, losses)``.
    """
    from rich.progress import track

    key_dim = net.config.key_dim
    if not key_dim:
        raise AtlasError("this core has no key (key_dim=0): a new book cannot be added by a key")
    if steps <= 0 or batch_size <= 0 or not lr > 0:
        raise AtlasError(f"fit_key needs steps > 0, batch_size > 0, lr > 0; got {steps}, {batch_size}, {lr}")
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    device = next(net.parameters()).device
    z0 = init if init is not None else torch.zeros(key_dim)
    z = torch.nn.Parameter(z0.detach().clone().float().to(device))
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min_lr_ratio + 0.5 * (1 - min_lr_ratio) * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    coords, targets = positions(len(ids)), ids.long()
    losses = []
    for _ in track(range(steps), description="fitting key", disable=not progress, transient=True):
        idx = torch.randint(len(ids), (min(batch_size, len(ids)),), generator=gen)
        logits, _ = net(coords[idx].to(device), z=z)
        loss = F.cross_entropy(logits.float(), targets[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return z.detach().cpu(), losses


# ----------------------------------------------------------------------------- two-part code


def encode_residual(net: FractalDecoder, ids: torch.Tensor, *, book_index: int | None = None,
                    z: torch.Tensor | None = None, batch_size: int = 8192) -> tuple[bytes, float]:
    """The text range-coded with the model's per-position probabilities.

    Returns ``(bytes, ideal_bits)``: a 12-byte header (magic, number of characters) + the
    constriction range coder's words, and the ideal code length sum(-log2 p) for comparison.
    """
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    ideal = 0.0
    for start, logits in iter_logits(net, len(ids), book_index=book_index, z=z, batch_size=batch_size):
        probs = torch.softmax(logits.double(), -1)
        symbols = ids[start:start + len(logits)]
        ideal -= float(torch.log2(probs.gather(1, symbols[:, None])).sum())
        encoder.encode(symbols.numpy().astype(np.int32), family, probs.numpy())
    words = encoder.get_compressed()
    return RESIDUAL_MAGIC + struct.pack("<Q", len(ids)) + words.tobytes(), ideal


def decode_residual(net: FractalDecoder, data: bytes, *, book_index: int | None = None,
                    z: torch.Tensor | None = None, batch_size: int = 8192) -> torch.Tensor:
    """Character ids back from ``encode_residual``'s bytes (the same model must decode)."""
    import constriction

    if len(data) < 12 or data[:4] != RESIDUAL_MAGIC:
        raise AtlasError("not a fractal-atlas residual (bad magic/header)")
    (n_chars,) = struct.unpack("<Q", data[4:12])
    words = np.frombuffer(data[12:], dtype=np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    out = []
    for _, logits in iter_logits(net, n_chars, book_index=book_index, z=z, batch_size=batch_size):
        probs = torch.softmax(logits.double(), -1).numpy()
        out.append(torch.from_numpy(decoder.decode(family, probs).astype(np.int64)))
    return torch.cat(out)


# ----------------------------------------------------------------------------- library


class AtlasLibrary:
    """A directory holding one core and the keys of its books (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths
    @property
    def core_path(self) -> Path:
        return self.root / CORE_FILE

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def key_path(self, book_id: int) -> Path:
        return self.root / KEYS_DIR / f"{book_id:05d}.safetensors"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # creation
    @classmethod
    def create(cls, root: str | Path, net: FractalDecoder, charset: Sequence[str],
               overwrite: bool = False) -> AtlasLibrary:
        """Write the core of ``net`` (and an empty index) into ``root``."""
        lib = cls(root)
        config = inference_config(net.config)
        with lib._locked():
            if lib.index_path.exists() and not overwrite:
                raise AtlasError(f"{lib.root} already holds an atlas library; pick a new directory "
                                 "(or overwrite=True to replace its core and drop its keys)")
            save_core_file(lib.core_path, core_state(net), config, charset)
            raw = lib.core_path.read_bytes()
            index = {"format": FORMAT, "created_at": _now(),
                     "core": {"file": CORE_FILE, "sha256": sha256_bytes(raw), "bytes": len(raw),
                              "config": config, "config_hash": config_hash(config),
                              "charset_hash": charset_hash(charset), "key_dim": config["key_dim"],
                              "params": sum(t.numel() for t in core_state(net).values())},
                     "books": []}
            lib._write_index(index)
        return lib

    # index
    def _write_index(self, index: dict[str, Any]) -> None:
        data = (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        write_atomic(self.index_path, lambda fh: fh.write(data))

    def index(self) -> dict[str, Any]:
        if not self.index_path.is_file():
            raise AtlasError(f"{self.root} is not an atlas library (no {INDEX_FILE})")
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AtlasError(f"{self.index_path}: corrupted index ({err})") from err
        if not isinstance(index, dict) or index.get("format") != FORMAT or \
                not isinstance(index.get("books"), list) or not isinstance(index.get("core"), dict):
            raise AtlasError(f"{self.index_path}: not a {FORMAT} index (keys format/core/books)")
        return index

    def books(self) -> list[dict[str, Any]]:
        return list(self.index()["books"])

    def book(self, book_id: int) -> dict[str, Any]:
        for entry in self.books():
            if entry["book_id"] == book_id:
                return entry
        raise AtlasError(f"{self.index_path}: no book with id {book_id}; "
                         f"ids: {[b['book_id'] for b in self.books()]}")

    # core and keys
    def load_core(self) -> tuple[FractalDecoder, CharVocab]:
        index = self.index()
        raw = self.core_path.read_bytes() if self.core_path.is_file() else b""
        if sha256_bytes(raw) != index["core"]["sha256"]:
            raise AtlasError(f"{self.core_path}: missing, truncated or replaced core "
                             f"(sha256 differs from {self.index_path})")
        net, charset, _ = load_core_file(self.core_path)
        return net, CharVocab(charset)

    def key_metadata(self, book_id: int, title: str) -> dict[str, str]:
        core = self.index()["core"]
        return {"format": FORMAT, "book_id": str(book_id), "title": title,
                "core_sha256": core["sha256"], "config_hash": core["config_hash"],
                "charset_hash": core["charset_hash"], "key_dim": str(core["key_dim"])}

    def check_key(self, path: str | Path) -> torch.Tensor:
        """The key in ``path``, after checking it belongs to this library's core."""
        tensors, meta, _ = read_safetensors(path, "key file")
        core = self.index()["core"]
        checks = (("charset_hash", "charset_hash", "character vocabulary"),
                  ("config_hash", "config_hash", "config"), ("core_sha256", "sha256", "core weights"))
        for key_field, core_field, what in checks:
            if meta.get(key_field) != core[core_field]:
                raise AtlasError(f"{path}: key belongs to a different core ({what} hash "
                                 f"{str(meta.get(key_field))[:12]} != {core[core_field][:12]} "
                                 f"of {self.core_path})")
        z = tensors.get(KEY_TENSOR)
        if z is None or tuple(z.shape) != (core["key_dim"],):
            raise AtlasError(f"{path}: expected a tensor {KEY_TENSOR!r} of shape ({core['key_dim']},), "
                             f"got {None if z is None else tuple(z.shape)}")
        return z.float()

    def load_key(self, book_id: int) -> torch.Tensor:
        entry = self.book(book_id)
        return self.check_key(self.root / entry["key_file"])

    def add_book(self, z: torch.Tensor, *, title: str, text: str, source: str = "",
                 metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Store a key and its index entry; the id is allocated under the library lock."""
        with self._locked():
            index = self.index()
            core = index["core"]
            if tuple(z.shape) != (core["key_dim"],):
                raise AtlasError(f"key of shape {tuple(z.shape)} for a core with key_dim {core['key_dim']}")
            book_id = max((b["book_id"] for b in index["books"]), default=-1) + 1
            path = self.key_path(book_id)
            save_key_file(path, z, self.key_metadata(book_id, title))
            entry = {"book_id": book_id, "title": title, "source": source, "n_chars": len(text),
                     "sha256": text_sha256(text), "charset_hash": core["charset_hash"],
                     "key_dim": core["key_dim"], "key_file": str(path.relative_to(self.root)),
                     "key_bytes": path.stat().st_size, "added_at": _now(),
                     **{k: float(v) for k, v in (metrics or {}).items()}}
            index["books"].append(entry)
            try:
                self._write_index(index)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return entry

    def verify(self) -> list[str]:
        """Problems found (empty when the core and every key load and match)."""
        problems = []
        try:
            self.load_core()
        except AtlasError as err:
            problems.append(str(err))
        for entry in self.books():
            try:
                self.load_key(entry["book_id"])
            except AtlasError as err:
                problems.append(str(err))
        return problems


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
