"""Stateful KV-cache embedder: feed text incrementally, get one layer's hidden state per token.

``StatefulEmbedder`` wraps a causal LM, either a platform checkpoint (any registered token
architecture: ``forward(idx, start_pos)``, ``setup_kv_cache``, ``config.block_size``) or a
Hugging Face causal LM saved in a local directory (``AutoModelForCausalLM``, no network). Each
``feed(text)`` encodes only the new tokens, attending to the cached keys/values of the earlier
ones, and returns the hidden states of the chosen layer (output of a block, read by a forward
hook) in float32 or float16.

Streaming text. Byte-level BPE merges never cross a pre-token (a word with its leading space,
a run of whitespace, ...), so ``feed`` holds back the last pre-token of what it was given (it
may still grow) and encodes it with the next call; ``flush()`` encodes it at the end of a
session. Text fed in pieces therefore gives the same tokens as the whole text. This holds for
the platform's byte and BPE tokenizers, GPT-2-style tokenizers and the character fallback; a
tokenizer that prepends a marker to every encoded string (SentencePiece ``Metaspace`` with
``prepend_scheme="always"``) would add one per piece.

Window eviction (``max_cache_tokens`` = W, ``keep_tokens`` = K < W). The cache holds at most W
tokens. When it is full, the oldest tokens are dropped so that the last K remain, and those K
are *re-encoded* from position 0 (one forward of K tokens), then feeding continues. Why
re-encode instead of sliding the cache:

* learned absolute positions (``pos_embedding=learned``, GPT-2): positions must stay below the
  model's ``block_size``; the kept tokens' keys/values were computed at positions that now
  belong to the front of the window, so they must be recomputed at positions 0..K-1;
* RoPE: keys could be rotated back by the shift (attention only sees relative positions), but
  the kept keys/values of layers >= 1 still carry information from the evicted tokens, so the
  result would not equal running the model on the kept window. Re-encoding gives exactly that.

Eviction happens at token counts (every W - K tokens once the cache first fills), never at
call boundaries, so the hidden state of each token depends only on the token sequence: text
fed in pieces gives the same outputs as the text fed at once, before and after evictions.
Within the first W tokens they equal one plain causal forward pass over the whole text.
A token's context is therefore between K and W tokens. Cost: about (W / (W - K)) forwards per
token beyond the first window; K = W / 2 by default.

Tokenizer: the checkpoint's (platform checkpoints carry its JSON; a Hugging Face directory's
``tokenizer.json``); when there is none, ``CharTokenizer``, a character-level fallback (id =
code point, unknown id for code points beyond the model's vocabulary) with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from datamodules.tokenizers import HFTokenizer, Tokenizer, build_tokenizer, load_pretrained
from lit_models.hidden_states import capture, resolve_layers

log = logging.getLogger("lit_models.embedder")

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class CharTokenizer:
    """Character-level fallback: id = Unicode code point when below ``vocab_size - 1``, else
    ``unk_id = vocab_size - 1``. No training, no files; one character per token."""

    def __init__(self, vocab_size: int) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"CharTokenizer needs vocab_size >= 2, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.unk_id = vocab_size - 1
        self.eos_id = self.unk_id
        self.pad_id = self.unk_id

    def encode(self, text: str) -> list[int]:
        return [o if o < self.unk_id else self.unk_id for o in map(ord, text)]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join("\ufffd" if i == self.unk_id else chr(i) for i in map(int, ids))

    def token_char_counts(self) -> list[int]:
        return [1] * self.vocab_size

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class Embedded(NamedTuple):
    """What one ``feed`` produced: hidden states (n, D) and the n token ids they belong to."""

    hidden: torch.Tensor
    ids: list[int]


_WORD = re.compile(r"\s*\S+|\s+")  # fallback pre-tokenization: words with leading whitespace


class _Backend:
    """A causal LM behind one interface: ``forward(ids, start)`` at cache fill ``start``."""

    net: nn.Module
    max_positions: int

    def reset(self) -> None: ...

    def forward(self, ids: torch.Tensor, start: int) -> None: ...


class _PlatformBackend(_Backend):
    def __init__(self, net: nn.Module, window: int) -> None:
        self.net, self.window = net, window
        self.max_positions = int(net.config.block_size)

    def reset(self) -> None:
        self.net.setup_kv_cache(1, self.window)

    def forward(self, ids: torch.Tensor, start: int) -> None:
        self.net(ids, start_pos=start)


class _HFBackend(_Backend):
    def __init__(self, net: nn.Module) -> None:
        self.net = net
        cfg = net.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None)
                                 or getattr(cfg, "n_positions", 0) or 1 << 30)
        self.cache: Any = None

    def reset(self) -> None:
        self.cache = None

    def forward(self, ids: torch.Tensor, start: int) -> None:
        if start == 0:
            self.cache = None
        out = self.net(input_ids=ids, past_key_values=self.cache, use_cache=True,
                       logits_to_keep=1)
        self.cache = out.past_key_values


class StatefulEmbedder:
    """Incremental hidden states of one layer of a causal LM, with a windowed KV cache.

    Args:
        net: the model (a platform architecture or a Hugging Face causal LM); put in eval mode.
        tokenizer: encodes text (see ``datamodules.tokenizers.Tokenizer``).
        layer: block index (negative from the end; -1 = last block, before the final norm) or
            a module name of ``net``.
        max_cache_tokens: W, the most tokens kept in the cache (default: the model's context).
        keep_tokens: K, tokens kept (re-encoded) at an eviction (default W // 2).
        dtype: "float32" or "float16" for the returned hidden states.
        kind: "platform" or "hf" (set by the constructors).
    """

    def __init__(self, net: nn.Module, tokenizer: Tokenizer, layer: int | str = -1,
                 max_cache_tokens: int | None = None, keep_tokens: int | None = None,
                 dtype: str = "float32", kind: str = "platform",
                 device: str | torch.device = "cpu") -> None:
        if kind not in ("platform", "hf"):
            raise ValueError(f"kind must be 'platform' or 'hf', got {kind!r}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(OUTPUT_DTYPES)}, got {dtype!r}")
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.dtype = OUTPUT_DTYPES[dtype]
        self.layer_name = resolve_layers(net, [layer])[0]
        probe = _HFBackend(net) if kind == "hf" else None
        limit = probe.max_positions if probe else int(net.config.block_size)
        window = limit if max_cache_tokens is None else max_cache_tokens
        if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= limit:
            raise ValueError(f"max_cache_tokens must be an int in [2, {limit}] (the model's "
                             f"context length), got {max_cache_tokens!r}")
        keep = window // 2 if keep_tokens is None else keep_tokens
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep < window:
            raise ValueError(f"keep_tokens must be an int in [0, max_cache_tokens={window}), "
                             f"got {keep_tokens!r}")
        self.max_cache_tokens, self.keep_tokens, self.kind = window, keep, kind
        self._backend: _Backend = probe or _PlatformBackend(net, window)
        self._pre_tokenize = _pre_tokenizer(tokenizer)
        self.reset()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> StatefulEmbedder:
        """A platform checkpoint written by ``experiments.train`` (loaded ``weights_only``)."""
        from lit_models.checkpoints import load_net

        net, meta = load_net(path, "tokens", "the TCS embedder")
        spec = meta.get("tokenizer")
        if spec:
            tokenizer = build_tokenizer(spec)
        else:
            tokenizer = CharTokenizer(net.config.vocab_size)
            log.warning(f"{path}: no tokenizer in the checkpoint; using {tokenizer!r}")
        return cls(net, tokenizer, kind="platform", **kwargs)

    @classmethod
    def from_hf(cls, path: str | Path, **kwargs: Any) -> StatefulEmbedder:
        """A Hugging Face causal LM saved in a local directory (``save_pretrained``)."""
        try:
            from transformers import AutoModelForCausalLM
        except ModuleNotFoundError as err:
            from lhp.errors import UserError
            raise UserError("StatefulEmbedder.from_hf needs transformers, the optional 'hf' extra: "
                            "pip install -e '.[hf]'") from err

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
        net = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        vocab = int(net.config.vocab_size)
        if (path / "tokenizer.json").is_file():
            tokenizer: Tokenizer = load_pretrained(path)
            if tokenizer.vocab_size > vocab:
                raise ValueError(f"{path}: tokenizer.json has {tokenizer.vocab_size} ids but the "
                                 f"model's vocab_size is {vocab}")
        else:
            tokenizer = CharTokenizer(vocab)
            log.warning(f"{path}: no tokenizer.json; using {tokenizer!r}")
        return cls(net, tokenizer, kind="hf", **kwargs)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Start a new session: empty cache, no held-back text, counters to zero."""
        self._backend.reset()
        self._cache_ids: list[int] = []  # tokens whose keys/values are in the cache
        self._pending_text = ""
        self.tokens_seen = 0
        self.chars_committed = 0  # characters whose tokens were emitted
        self.evictions = 0

    @property
    def cache_len(self) -> int:
        return len(self._cache_ids)

    # ------------------------------------------------------------------ feeding
    def feed(self, text: str) -> Embedded:
        """Encode the new complete pre-tokens of ``text`` (the last one is held back)."""
        if not isinstance(text, str):
            raise TypeError(f"feed takes a str, got {type(text).__name__}")
        pending = self._pending_text + text
        cut = self._stable_prefix(pending)
        self._pending_text = pending[cut:]
        return self._commit(pending[:cut])

    def flush(self) -> Embedded:
        """Encode the held-back text (end of a session or of a document)."""
        text, self._pending_text = self._pending_text, ""
        return self._commit(text)

    def feed_ids(self, ids: Iterable[int]) -> Embedded:
        """Feed token ids directly (no tokenizer, no holding back)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self._model_vocab()]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the model's vocabulary "
                             f"(0..{self._model_vocab() - 1})")
        return Embedded(self._run(ids), ids)

    def _commit(self, text: str) -> Embedded:
        ids = self.tokenizer.encode(text) if text else []
        self.chars_committed += len(text)
        return Embedded(self._run(ids), ids)

    def _stable_prefix(self, text: str) -> int:
        """Length of the prefix of ``text`` whose tokens cannot change when text is appended."""
        spans = self._pre_tokenize(text)
        return spans[-1][0] if spans else 0

    def _model_vocab(self) -> int:
        cfg = getattr(self.net, "config", None)
        return int(getattr(cfg, "vocab_size", self.tokenizer.vocab_size))

    @torch.inference_mode()
    def _run(self, ids: list[int]) -> torch.Tensor:
        out: list[torch.Tensor] = []
        with capture(self.net, [self.layer_name]) as store:
            i = 0
            while i < len(ids):
                if len(self._cache_ids) == self.max_cache_tokens:
                    self._evict(store)
                take = min(len(ids) - i, self.max_cache_tokens - len(self._cache_ids))
                chunk = ids[i:i + take]
                self._backend.forward(self._tensor(chunk), len(self._cache_ids))
                out.append(store[self.layer_name][0, -len(chunk):])
                self._cache_ids += chunk
                i += take
        self.tokens_seen += len(ids)
        if not out:
            return torch.zeros(0, self._width(), dtype=self.dtype)
        return torch.cat(out).to("cpu", self.dtype)

    def _evict(self, store: dict[str, torch.Tensor]) -> None:
        kept = self._cache_ids[len(self._cache_ids) - self.keep_tokens:] if self.keep_tokens else []
        self._backend.reset()
        self._cache_ids = []
        if kept:  # re-encode the kept window at positions 0..K-1 (its outputs are discarded)
            self._backend.forward(self._tensor(kept), 0)
            self._cache_ids = kept
        store.clear()
        self.evictions += 1

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def _width(self) -> int:
        cfg = self.net.config
        return int(getattr(cfg, "n_embd", None) or cfg.hidden_size)

    def __repr__(self) -> str:
        return (f"StatefulEmbedder(kind={self.kind!r}, layer={self.layer_name!r}, "
                f"max_cache_tokens={self.max_cache_tokens}, keep_tokens={self.keep_tokens}, "
                f"tokenizer={self.tokenizer!r})")


def _pre_tokenizer(tokenizer: Tokenizer):
    """A function text -> [(start, end)] of pre-tokens: the tokenizer's own pre-tokenizer when
    it has one (Hugging Face ``tokenizers``), else words with their leading whitespace.
    Byte and character tokenizers need no holding back: every character is final."""
    if isinstance(tokenizer, HFTokenizer):
        pre = tokenizer.hf_tokenizer.pre_tokenizer
        if pre is not None:
            return lambda text: [span for _, span in pre.pre_tokenize_str(text)]
        return lambda text: [m.span() for m in _WORD.finditer(text)]
    return lambda text: [(len(text), len(text))] if text else []
