"""Fractal decoder: config validation, V-configs, float64 features, sparse updates, memorization."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from datamodules.book_coords import BookCoordsDataModule, CharVocab, positions
from lit_models.archs.fractal import FractalConfig, FractalDecoder, fourier_features
from lit_models.atlas import evaluate_text
from tests.conftest import CONF

SMALL = dict(vocab_size=12, n_embd=16, block_hidden=32, depth=3, n_frequencies=8, key_dim=4)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train much faster on one thread when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("bad", "match"), [
    (dict(vocab_size=0), "vocab_size"), (dict(depth=0), "depth"), (dict(alpha=0.0), "alpha"),
    (dict(update_fraction=1.5), "update_fraction"), (dict(frequency_spacing="log"), "frequency_spacing"),
    (dict(head="adaptive"), "head"), (dict(key_dim=-1), "key_dim"), (dict(growth=1.0), "growth"),
])
def test_config_validation_names_the_key(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FractalConfig(**{**SMALL, **bad})


def test_v_configs_instantiate_with_equal_parameter_counts(make_cfg) -> None:
    nets = {}
    for version in ("v3", "v5", "v7", "v8"):
        cfg = make_cfg([f"model=fractal_{version}", "model.arch_config.vocab_size=80"])
        nets[version] = instantiate(cfg.model, _convert_="all").net
    c = {v: n.config for v, n in nets.items()}
    assert c["v3"].frequency_spacing == "linear" and c["v3"].key_dim == 0 and c["v3"].update_fraction == 1
    assert c["v5"].frequency_spacing == "octave" and c["v5"].key_dim > 0 and c["v5"].update_fraction < 1
    assert c["v7"].spectral_norm and c["v7"].depth_warmup_steps > 0 and not c["v5"].spectral_norm
    assert c["v8"].head == "factorized" and c["v8"].spectral_norm and c["v7"].head == "linear"
    counts = {v: n.num_params() for v, n in nets.items()}
    assert max(counts.values()) / min(counts.values()) < 1.02, counts
    assert {p.stem for p in (CONF / "model").glob("fractal_*.yaml")} >= {f"fractal_{v}" for v in nets}


def test_frequencies_are_octaves_or_linear() -> None:
    octave = FractalConfig(**SMALL).frequencies()
    torch.testing.assert_close(octave, math.pi * 2.0 ** torch.arange(8, dtype=torch.float64))
    linear = FractalConfig(**{**SMALL, "frequency_spacing": "linear"}).frequencies()
    torch.testing.assert_close(linear, math.pi * torch.arange(1, 9, dtype=torch.float64))


def test_neighbouring_positions_of_a_5m_character_book_stay_distinguishable(tmp_path) -> None:
    n = 5_000_000
    book = tmp_path / "synthetic.txt"
    book.write_text("".join(chr(97 + (i * 7919) % 23) for i in range(1000)) * (n // 1000))
    dm = BookCoordsDataModule([str(book)])
    freqs = FractalConfig(vocab_size=dm.vocab_size, n_frequencies=23).frequencies()  # pi 2^22 ~ pi N
    x = dm.dataset.coords
    assert x.dtype == torch.float64 and len(x) == n and bool((x[1:] > x[:-1]).all())
    idx = [0, 1, 2_500_000, 2_500_001, n - 2, n - 1]
    feats = fourier_features(dm.dataset.__getitems__(idx)["coords"], freqs).float()  # net input
    for a, b in ((0, 1), (2, 3), (4, 5)):
        assert (feats[a] - feats[b]).abs().max() > 0.5, f"positions {idx[a]} and {idx[b]} collapse"
    # Why float64: computed in float32, the top-frequency phase near x = 1 is off by radians.
    x32 = torch.arange(n - 3, n, dtype=torch.float32) / (n - 1)
    phase32 = (x32 * freqs[-1].float()).double()
    assert (phase32 - positions(n)[n - 3:] * freqs[-1]).abs().max() > 0.1


def test_sparse_updates_touch_only_the_chosen_units() -> None:
    torch.manual_seed(0)
    net = FractalDecoder(FractalConfig(**{**SMALL, "update_fraction": 0.25}))
    states = net.states(torch.rand(5, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    assert len(states) == 4
    for before, after in zip(states[:-1], states[1:], strict=True):
        changed = (after != before).sum(-1)
        assert (changed <= 4).all() and (changed > 0).all()  # ceil(0.25 * 16) units per step
    dense = FractalDecoder(FractalConfig(**SMALL))
    states = dense.states(torch.rand(5, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    assert ((states[1] != states[0]).sum(-1) > 4).all()


def test_depth_warmup_schedule() -> None:
    net = FractalDecoder(FractalConfig(**{**SMALL, "depth": 4, "depth_warmup_steps": 100}))
    assert [net.active_depth(s) for s in (0, 30, 50, 80, 100, 10_000)] == [1, 1, 2, 3, 4, 4]
    assert net.active_depth(None) == 4


def test_spectral_norm_bounds_the_block() -> None:
    torch.manual_seed(0)
    net = FractalDecoder(FractalConfig(**{**SMALL, "spectral_norm": True}))
    net.train()
    for _ in range(30):  # power iterations converge
        net(torch.rand(4, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    net.eval()
    for layer in (net.block.w_in, net.block.w_out):
        assert torch.linalg.matrix_norm(layer.weight, ord=2) < 1.05


def test_key_argument_matches_the_key_table_and_book_ids_differ() -> None:
    torch.manual_seed(0)
    net = FractalDecoder(FractalConfig(**{**SMALL, "num_books": 2})).eval()
    x = torch.rand(6, dtype=torch.float64)
    ones = torch.ones(6, dtype=torch.long)
    torch.testing.assert_close(net(x, ones)[0], net(x, z=net.keys.weight[1])[0])
    assert not torch.allclose(net(x, ones)[0], net(x, 0 * ones)[0])
    with pytest.raises(ValueError, match="book_id"):
        net(x)
    with pytest.raises(ValueError, match="1-D"):
        net(x[:, None], ones)


def test_tiny_book_is_reconstructed_exactly_after_short_training(one_thread) -> None:
    torch.manual_seed(0)
    text = "Alice was beginning to get very tired of sitting by her sister on the bank, " \
           "and of having nothing to do: once or twice she had peeped into the book her sister " \
           "was reading, but it had no pictures or conversations in it."
    vocab = CharVocab.from_texts([text])
    ids = vocab.encode(text)
    net = FractalDecoder(FractalConfig(vocab_size=len(vocab), n_embd=64, block_hidden=128, depth=2,
                                       n_frequencies=10, key_dim=8, update_fraction=0.5))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, book = positions(len(ids)), torch.zeros(len(ids), dtype=torch.long)
    for _ in range(150):
        loss = F.cross_entropy(net(x, book)[0], ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = evaluate_text(net.eval(), ids, book_index=0)
    assert result["wrong"] == 0 and vocab.decode(result["pred"]) == text
