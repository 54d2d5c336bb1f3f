"""StatefulEmbedder: text fed in pieces == text fed at once (before and after window
evictions), == one plain causal forward within the window; platform GPT (learned and rope
positions) and a tiny random Hugging Face GPT-2 saved to a local directory."""

from __future__ import annotations

import random

import pytest
import torch

from datamodules.tokenizers import ByteTokenizer, train_bpe
from lit_models.archs import build_arch
from lit_models.embedder import CharTokenizer, StatefulEmbedder
from lit_models.hidden_states import block_names, capture, resolve_layers

TEXT = ("It's a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.\n\n  Alice was beginning to get very tired of "
        "sitting by her sister on the bank, and of having nothing to do: 1865, 1813. ") * 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread (and much faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([TEXT, TEXT.upper(), "héllo wörld ünïcode"], 400)


def tiny_gpt(pos: str, vocab: int, block: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_arch("gpt", {"vocab_size": vocab, "block_size": block, "n_layer": 3,
                              "n_head": 2, "n_embd": 32, "pos_embedding": pos}).eval()


def pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 12))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def feed_all(emb: StatefulEmbedder, parts: list[str]) -> tuple[torch.Tensor, list[int]]:
    emb.reset()
    outs = [emb.feed(p) for p in parts] + [emb.flush()]
    return torch.cat([o.hidden for o in outs]), [i for o in outs for i in o.ids]


def full_pass(net: torch.nn.Module, ids: list[int], layer: str, hf: bool = False) -> torch.Tensor:
    with torch.no_grad(), capture(net, [layer]) as store:
        x = torch.tensor([ids])
        net(input_ids=x, use_cache=False) if hf else net(x)
    return store[layer][0]


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_platform_pieces_equal_whole_and_full_pass(bpe, pos: str) -> None:
    net = tiny_gpt(pos, bpe.vocab_size, block=256)
    emb = StatefulEmbedder(net, bpe, layer=1)
    text = TEXT[:300]
    whole, whole_ids = feed_all(emb, [text])
    assert whole_ids == bpe.encode(text) and len(whole_ids) < 256, "must fit the window"
    for seed in range(3):
        h, ids = feed_all(emb, pieces(text, seed))
        assert ids == whole_ids
        torch.testing.assert_close(h, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, full_pass(net, whole_ids, "blocks.1"), atol=1e-5, rtol=1e-5)
    assert emb.evictions == 0 and emb.chars_committed == len(text)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_eviction_is_deterministic_and_reencodes_the_kept_window(pos: str) -> None:
    tok = ByteTokenizer()
    net = tiny_gpt(pos, tok.vocab_size, block=48)
    emb = StatefulEmbedder(net, tok, layer=-1, max_cache_tokens=40, keep_tokens=16)
    text = TEXT[:200]
    whole, ids = feed_all(emb, [text])
    assert emb.evictions == (200 - 40) // (40 - 16) + 1
    for seed in range(2):
        h, _ = feed_all(emb, pieces(text, seed))
        torch.testing.assert_close(h, whole, atol=1e-5, rtol=1e-5)
    # token 40 is the first after an eviction: its context is exactly tokens 24..40
    ref = full_pass(net, ids[24:41], "blocks.2")
    torch.testing.assert_close(whole[40], ref[-1], atol=1e-5, rtol=1e-5)
    # and the first 40 tokens equal one plain forward pass
    torch.testing.assert_close(whole[:40], full_pass(net, ids[:40], "blocks.2"),
                               atol=1e-5, rtol=1e-5)


def test_bpe_streaming_tokenization_matches_whole_text(bpe) -> None:
    emb = StatefulEmbedder(tiny_gpt("learned", bpe.vocab_size, 512), bpe)
    text = TEXT + "héllo  wörld, don't   stop\n\n\n12,345.67 ünïcode"
    for seed in range(10):
        emb.reset()
        ids = [i for p in pieces(text, seed) for i in emb.feed(p).ids] + emb.flush().ids
        assert ids == bpe.encode(text), f"seed {seed}"


def test_float16_output_and_counters() -> None:
    tok = ByteTokenizer()
    emb = StatefulEmbedder(tiny_gpt("learned", tok.vocab_size), tok, dtype="float16")
    out = emb.feed("hello")
    assert out.hidden.dtype == torch.float16 and out.hidden.shape == (5, 32)
    assert emb.tokens_seen == 5 and emb.cache_len == 5
    emb.reset()
    assert emb.tokens_seen == 0 and emb.cache_len == 0
    assert emb.feed("").hidden.shape == (0, 32)


def test_bad_arguments_are_named() -> None:
    tok = ByteTokenizer()
    net = tiny_gpt("learned", tok.vocab_size, block=64)
    with pytest.raises(ValueError, match=r"blocks\.0.*blocks\.2"):
        StatefulEmbedder(net, tok, layer="decoder.nope")
    with pytest.raises(ValueError, match="out of range"):
        StatefulEmbedder(net, tok, layer=3)
    with pytest.raises(ValueError, match=r"max_cache_tokens must be an int in \[2, 64\]"):
        StatefulEmbedder(net, tok, max_cache_tokens=65)
    with pytest.raises(ValueError, match="keep_tokens"):
        StatefulEmbedder(net, tok, max_cache_tokens=32, keep_tokens=32)
    with pytest.raises(ValueError, match="dtype"):
        StatefulEmbedder(net, tok, dtype="bfloat8")
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        StatefulEmbedder(net, tok).feed_ids([1, 258])


def test_layer_discovery_by_structure_and_pattern() -> None:
    net = tiny_gpt("learned", 258)
    assert block_names(net) == ["blocks.0", "blocks.1", "blocks.2"]
    assert resolve_layers(net, [-1, "blocks.0", "blocks.*.attn"]) == [
        "blocks.2", "blocks.0", "blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]


def test_char_tokenizer_fallback() -> None:
    tok = CharTokenizer(100)
    assert tok.encode("ab\u00e9") == [97, 98, 99]  # é (233) is beyond the vocab: unk id 99
    assert tok.decode([97, 98]) == "ab"


def test_platform_checkpoint_without_tokenizer_uses_char_fallback(tmp_path) -> None:
    from lit_models.language_model import LanguageModel

    arch = {"vocab_size": 300, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 16}
    module = LanguageModel("gpt", arch)
    path = tmp_path / "x.ckpt"
    torch.save({"platform": {"config": {"model": {
        "_target_": "lit_models.language_model.LanguageModel"}}, "tokenizer": None},
        "hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    emb = StatefulEmbedder.from_checkpoint(path, layer=0)
    assert isinstance(emb.tokenizer, CharTokenizer) and emb.layer_name == "blocks.0"
    assert emb.feed("abc").hidden.shape == (3, 16)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="needs the optional 'hf' extra: pip install -e '.[hf]'")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=400, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0)
    path = tmp_path_factory.mktemp("hf_gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_hf_model_pieces_equal_whole_and_full_pass(hf_dir, bpe, tmp_path,
                                                   with_tokenizer: bool) -> None:
    path = hf_dir
    if with_tokenizer:
        path = tmp_path / "with_tok"
        path.mkdir()
        for f in hf_dir.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        (path / "tokenizer.json").write_text(bpe.to_dict()["json"])
    emb = StatefulEmbedder.from_hf(path, layer=-1)
    assert emb.layer_name == "transformer.h.1"
    assert isinstance(emb.tokenizer, CharTokenizer) != with_tokenizer
    text = TEXT[:120] if with_tokenizer else TEXT[:60]
    whole, ids = feed_all(emb, [text])
    assert len(ids) <= 64
    h, ids2 = feed_all(emb, pieces(text, 1))
    assert ids2 == ids
    torch.testing.assert_close(h, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, full_pass(emb.net, ids, "transformer.h.1", hf=True),
                               atol=1e-5, rtol=1e-5)


def test_hf_model_eviction_matches_plain_forward_on_kept_window(hf_dir) -> None:
    emb = StatefulEmbedder.from_hf(hf_dir, max_cache_tokens=32, keep_tokens=8)
    text = TEXT[:100]
    whole, ids = feed_all(emb, [text])
    h, _ = feed_all(emb, pieces(text, 2))
    torch.testing.assert_close(h, whole, atol=1e-5, rtol=1e-5)
    # token 32 comes right after the first eviction: context = tokens 24..32
    ref = full_pass(emb.net, ids[24:33], "transformer.h.1", hf=True)
    torch.testing.assert_close(whole[32], ref[-1], atol=1e-5, rtol=1e-5)


def test_hf_dir_without_config_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        StatefulEmbedder.from_hf(tmp_path)
