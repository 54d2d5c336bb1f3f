"""Analytic training FLOPs per token (``GPTConfig.flops_terms`` and the architectures' extras):
a hand count for the GPT, and the matmul part against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lit_models.archs import ARCHITECTURES, build_arch, make_config

B, T = 3, 8
SMALL = dict(vocab_size=10, block_size=T, n_layer=2, n_head=2, n_embd=8)


def test_gpt_matches_a_hand_count():
    # n_layer=2, n_embd C=8, MLP width 4C=32, vocab 10, sequence 4 (a query sees 2.5 keys):
    #   qkv + output projection: 2 layers x 2 FLOPs x (3*8*8 + 8*8)      = 1024
    #   q.k and p.v:             2 layers x 2 x 2 matmuls x 8 x 2.5      =  160
    #   MLP:                     2 layers x 2 x (8*32 + 32*8)            = 2048
    #   head:                    2 x 8 x 10                              =  160
    #   forward 3392 per token; backward twice that: 10176
    cfg = make_config("gpt", {**SMALL, "block_size": 4})
    assert cfg.flops_terms() == {"attention_proj": (1024, 2048), "attention_scores": (160, 320),
                                 "mlp": (2048, 4096), "head": (160, 320)}
    assert cfg.training_flops_per_token() == 10176
    assert cfg.training_flops_per_token(seq_len=2) == 10176 - 3 * 2 * 2 * 2 * 8 * (2.5 - 1.5)


def _counted(arch: str, values: dict) -> float:
    """torch's FlopCounterMode over one forward + backward, per token. It counts matmuls
    (mm/addmm/bmm), not SDPA on the CPU and not element-wise ops."""
    torch.manual_seed(0)
    net = build_arch(arch, values)
    with FlopCounterMode(display=False) as counter:
        net(torch.randint(0, 10, (B, T)))[0].sum().backward()
    return counter.get_total_flops() / (B * T)


def _matmuls(arch: str, values: dict, drop: tuple[str, ...] = ("attention_scores",)) -> float:
    terms = make_config(arch, values).flops_terms(T, B * T)
    return sum(f + b for part, (f, b) in terms.items() if part not in drop)


@pytest.mark.parametrize(("arch", "extra"), [
    ("gpt", {}),
    ("gpt", {"linear": "phm", "phm_n": 2}),         # + building the dense weights once a step
    ("indra", {"d_model": 16, "projector": "real"}),  # + projector and the tied head's vocab path
    ("gpt", {"tie_embeddings": False, "mlp_ratio": 2.0}),
])
def test_matmul_terms_equal_torch_flop_counter(arch, extra):
    values = {**SMALL, **extra}
    assert _matmuls(arch, values) == pytest.approx(_counted(arch, values), rel=1e-9)


def test_indra_complex_projector_adds_only_element_wise_work():
    base = {**SMALL, "d_model": 16}
    real = make_config("indra", {**base, "projector": "real"}).training_flops_per_token(T, B * T)
    cplx = make_config("indra", {**base, "projector": "complex"}).training_flops_per_token(T, B * T)
    # softplus, cos, sin and two products per complex number (C/2 = 4 of them), for each token
    # and each vocabulary entry (10 over B*T tokens), forward + 2x backward
    assert cplx - real == pytest.approx(3 * 3.5 * 8 * (1 + 10 / (B * T)))
    assert _counted("indra", {**base, "projector": "complex"}) == pytest.approx(
        _matmuls("indra", {**base, "projector": "real"}))


def test_qtg_filter_matmuls_equal_torch_flop_counter():
    plain = {**SMALL, "attention": "dot", "use_qembed": False}
    k, c = 3, 8
    mst = {**plain, "topo_filter": "mst", "topo_k": k}
    # the k-NN search's (T, T) distance matmul without gradient (2 C T per token, forward only)
    # and the neighbourhood Gram matrices of k + 1 points with it (2 (k+1)^2 C, 3x)
    extra = 2 * c * T + 3 * 2 * (k + 1) ** 2 * c
    assert _counted("qtg", mst) == pytest.approx(_counted("gpt", SMALL) + extra)
    terms = make_config("qtg", mst).flops_terms(T, B * T)
    assert terms["topo_select"] == (3 * c + 2 * c * T, 0.0)
    assert terms["topo_filter"][0] > 2 * (k + 1) ** 2 * c  # Gram + distances, Prim, sigmoids, mean


def test_qtg_extras_and_switches():
    gpt = make_config("gpt", SMALL).training_flops_per_token()
    none = {**SMALL, "attention": "dot", "use_qembed": False, "topo_filter": "none"}
    assert make_config("qtg", none).training_flops_per_token() == gpt  # every part switched off
    full = make_config("qtg", {**SMALL, "topo_k": 3}).flops_terms()
    assert {"qembed", "topo_select", "topo_filter", "geo_extra"} <= set(full)
    # Fisher-Rao attention: per layer 4 ops per score and head (4.5 keys per query at T=8) and
    # the query/key distributions (18 C)
    assert full["geo_extra"][0] == 2 * (4 * 2 * 4.5 + 18 * 8)
    knn = make_config("qtg", {**SMALL, "topo_k": 3, "topo_filter": "knn_mean"}).flops_terms()
    assert knn["topo_filter"][0] == 2 * 3 * 8 + 8 < full["topo_filter"][0]


def test_flops_grow_with_the_sequence_only_through_attention():
    cfg = make_config("gpt", {**SMALL, "block_size": 64})
    short, long = cfg.flops_terms(16), cfg.flops_terms(64)
    assert {p: v for p, v in short.items() if p != "attention_scores"} == \
        {p: v for p, v in long.items() if p != "attention_scores"}
    assert long["attention_scores"][0] / short["attention_scores"][0] == pytest.approx(65 / 17)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_counts_at_least_its_gpt_backbone(name):
    values = {**SMALL, "topo_k": 3} if name == "qtg" else SMALL
    cfg = make_config(name, values)
    terms = cfg.flops_terms(T, B * T)
    assert all(f >= 0 and b >= 0 for f, b in terms.values())
    assert cfg.training_flops_per_token(T, B * T) >= \
        make_config("gpt", SMALL).training_flops_per_token(T, B * T) > 0
