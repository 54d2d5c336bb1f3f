"""GPT architecture: config validation, size, KV cache, causality of every registered arch."""

from __future__ import annotations

import pytest
import torch

from lit_models.archs import ARCHITECTURES, build_arch, make_config
from lit_models.archs.gpt import GPTConfig

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(n_head=5), "divisible"),
        (dict(pos_embedding="alibi"), "pos_embedding"),
        (dict(dropout=1.5), "dropout"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=None), "vocab_size"),
    ],
)
def test_config_validation_names_the_key(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **bad})


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ValueError, match="n_layers"):
        make_config("gpt", {**TINY, "n_layers": 3})


def test_unknown_architecture_lists_registered() -> None:
    with pytest.raises(KeyError, match="gpt"):
        build_arch("nope", TINY)


def test_default_gpt_is_about_10m_params() -> None:
    with torch.device("meta"):
        model = build_arch("gpt", {"vocab_size": 258, "block_size": 256})
    assert 9.5e6 < model.num_params() < 11.5e6


def test_tied_embeddings_share_storage() -> None:
    model = build_arch("gpt", TINY)
    assert model.lm_head.weight is model.wte.weight
    untied = build_arch("gpt", {**TINY, "tie_embeddings": False})
    assert untied.num_params() == model.num_params() + TINY["vocab_size"] * TINY["n_embd"]


@pytest.mark.parametrize("variant", [{}, {"pos_embedding": "rope"}, {"qk_norm": True},
                                     {"pos_embedding": "rope", "qk_norm": True}])
def test_kv_cache_matches_full_forward(variant: dict) -> None:
    torch.manual_seed(0)
    model = build_arch("gpt", {**TINY, **variant}).eval()
    x = torch.randint(0, TINY["vocab_size"], (3, 12))
    full, _ = model(x)
    model.setup_kv_cache(3, 16)
    parts = [model(x[:, :5], start_pos=0)[0]]
    parts += [model(x[:, i : i + 1], start_pos=i)[0] for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_block_size_is_rejected() -> None:
    model = build_arch("gpt", TINY)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, TINY["block_size"] + 1, dtype=torch.long))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_causality_of_every_registered_architecture(name: str) -> None:
    """Changing token j must not change any logit at positions < j."""
    torch.manual_seed(0)
    model = build_arch(name, TINY).eval()
    x = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    base, _ = model(x)
    for j in (0, 5, TINY["block_size"] - 1):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % TINY["vocab_size"]
        out, _ = model(y)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.equal(out[:, j:], base[:, j:]), "token j must influence positions >= j"
