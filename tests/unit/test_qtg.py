"""QTG: Fisher-Rao attention, topological filter, causality, KV cache, loss terms, configs, sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from lit_models.archs import build_arch
from lit_models.archs.qtg import QTGConfig
from lit_models.components import CausalSelfAttention
from lit_models.components.geo_attention import (
    GeoAttentionFunction,
    GeoSelfAttention,
    fisher_rao_distance,
    geo_attention_reference,
    sqrt_probs,
)
from lit_models.components.topo_filter import TopoFilter, causal_knn, local_h0
from lit_models.generation import generate
from lit_models.topology import euclidean_mst

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


# --------------------------------------------------------------------------- Fisher-Rao
def test_fisher_rao_distance_matches_the_direct_formula() -> None:
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    r = torch.softmax(torch.randn(4, 7, dtype=torch.float64) * 3, -1)
    d = fisher_rao_distance(p, r, eps=1e-15)
    for i in range(5):
        for j in range(4):
            bc = sum(math.sqrt(p[i, k].item() * r[j, k].item()) for k in range(7))
            assert d[i, j].item() == pytest.approx(2 * math.acos(min(bc, 1.0)), abs=1e-9)


def test_fisher_rao_distance_edge_cases_are_finite() -> None:
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], requires_grad=True)
    r = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    d = fisher_rao_distance(p, r)
    assert d[0, 0].item() == pytest.approx(math.pi)  # disjoint supports: the maximum, pi
    assert d[0, 1].item() < 0.01  # identical (clamped just below BC = 1)
    logits = torch.tensor([[30.0, -30.0, 0.0]], requires_grad=True)  # near a vertex
    a = sqrt_probs(logits)
    GeoAttentionFunction.apply(a[None, None], a[None, None], torch.ones(1, 1, 1, 2),
                               torch.ones(1), None, 1e-6).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_geo_attention_function_matches_plain_autograd() -> None:
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 9, 8
    q, k = torch.randn(b, h, t, d) * 2, torch.randn(b, h, t, d) * 2
    v = torch.randn(b, h, t, 5)
    gamma = torch.tensor([0.5, 1.0, 3.0])
    leaves = [x.clone().requires_grad_() for x in (q, k, v, gamma)]
    out = GeoAttentionFunction.apply(sqrt_probs(leaves[0]), sqrt_probs(leaves[1]), leaves[2],
                                     leaves[3], None, 1e-6)
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v, gamma)]
    ref = geo_attention_reference(sqrt_probs(ref_leaves[0]), sqrt_probs(ref_leaves[1]),
                                  ref_leaves[2], ref_leaves[3])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for mine, theirs in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- filter
def test_local_h0_matches_the_topology_engine() -> None:
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(6, 7, 3))
    dist = torch.cdist(torch.from_numpy(clouds), torch.from_numpy(clouds))
    edges, minimax = local_h0(dist)
    for c in range(len(clouds)):
        tree, lengths = euclidean_mst(clouds[c])  # H0 bars of the engine: the EMST's edges
        np.testing.assert_allclose(np.sort(edges[c].numpy()), np.sort(lengths), rtol=1e-12)
        # minimax from node 0 = longest edge on the tree path (brute force over the engine tree)
        adj = {i: [] for i in range(7)}
        for (u, v), w in zip(tree, lengths, strict=True):
            adj[u].append((v, w))
            adj[v].append((u, w))
        best, stack = {0: 0.0}, [0]
        while stack:
            u = stack.pop()
            for v, w in adj[u]:
                if v not in best:
                    best[v] = max(best[u], w)
                    stack.append(v)
        np.testing.assert_allclose(minimax[c].numpy(), [best[i] for i in range(7)], rtol=1e-12)


def test_causal_knn_only_looks_back() -> None:
    u = torch.nn.functional.normalize(torch.randn(2, 10, 6), dim=-1)
    idx, valid = causal_knn(u, 3)
    rows = torch.arange(10).view(1, 10, 1)
    assert bool((idx[valid] < rows.expand_as(idx)[valid]).all())
    assert valid.sum(-1)[0].tolist() == [0, 1, 2] + [3] * 7


@pytest.mark.parametrize("mode", ["mst", "knn_mean"])
def test_filter_is_prefix_causal_and_differentiable(mode: str) -> None:
    torch.manual_seed(0)
    filt = TopoFilter(k=3, threshold=1.2, temperature=0.1, mode=mode)
    x = torch.randn(2, 12, 8, requires_grad=True)
    out, loss = filt(x)
    for j in (3, 7, 11):
        y = x.detach().clone()
        y[:, j] += torch.randn(8)
        out2, _ = filt(y)
        torch.testing.assert_close(out2[:, :j], out[:, :j].detach(), rtol=0, atol=0)
    (out[:, -1].sum() + loss).backward()
    grad = x.grad.abs().sum(-1)[0]
    assert torch.isfinite(x.grad).all()
    assert grad[:-1].sum() > 0, "the last output must depend on earlier tokens"
    if mode == "mst":
        assert loss.item() > 0
        x.grad = None
        filt(x)[1].backward()  # L_topo alone reaches the embeddings through the bar lengths
        assert x.grad.abs().sum() > 0


def test_filter_merges_short_lived_neighbours_and_keeps_long_lived_ones() -> None:
    filt = TopoFilter(k=2, threshold=0.5, temperature=0.01)
    e0, e1 = torch.eye(2)
    near = torch.nn.functional.normalize(e0 + 0.05 * e1, dim=0)
    x = torch.stack([e0, e1, near])[None]  # token 2: close to token 0, far from token 1
    out, _ = filt(x)
    expected = torch.nn.functional.normalize(e0 + near, dim=0) * (e0 + near).norm() / 2
    torch.testing.assert_close(out[0, 2], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[0, 1], e1)  # its only neighbour is a long-lived bar away


# --------------------------------------------------------------------------- model
VARIANTS = [{}, {"topo_filter": "knn_mean"}, {"attention": "dot"}, {"use_qembed": False},
            {"pos_embedding": "rope"}, {"topo_filter": "mst", "topo_threshold": 1.9}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_model_is_causal_with_the_filter_on(variant: dict) -> None:
    torch.manual_seed(0)
    model = build_arch("qtg", {**TINY, **variant}).eval()
    x = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    base, _ = model(x)
    for j in (1, 6, TINY["block_size"] - 1):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % TINY["vocab_size"]
        out, _ = model(y)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.equal(out[:, j:], base[:, j:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_with_kv_cache_equals_without(variant: dict) -> None:
    torch.manual_seed(1)
    model = build_arch("qtg", {**TINY, **variant, "topo_threshold": 1.5})
    prompt = torch.randint(0, TINY["vocab_size"], (2, 5))
    # 20 new tokens: the 16-token window slides, so the cache is also rebuilt mid-way
    cached = generate(model, prompt, 20, temperature=0, use_cache=True)
    plain = generate(model, prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)
    model.eval()
    with torch.no_grad():
        full, _ = model(cached[:, :16])
        model.setup_kv_cache(2, 16)
        steps = [model(cached[:, :4], start_pos=0)[0]]
        steps += [model(cached[:, i:i + 1], start_pos=i)[0] for i in range(4, 16)]
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_switches_fall_back_to_standard_components_and_zero_terms() -> None:
    model = build_arch("qtg", {**TINY, "use_qembed": False, "topo_filter": "none",
                               "attention": "dot"})
    assert model.qembed is None
    assert all(type(b.attn) is CausalSelfAttention for b in model.blocks)
    _, aux = model(torch.randint(0, 50, (1, 8)))
    assert sorted(aux) == ["geo", "quantum", "topo"] and all(v.item() == 0 for v in aux.values())
    full = build_arch("qtg", TINY)
    assert all(isinstance(b.attn, GeoSelfAttention) for b in full.blocks)
    _, aux = full(torch.randint(0, 50, (1, 8)))
    assert aux["geo"].item() > 0 and aux["quantum"].item() > 0


def test_qembed_gives_unit_amplitudes() -> None:
    model = build_arch("qtg", {**TINY, "topo_filter": "none"})
    f = model.wte(torch.arange(10))
    alpha, quantum = model.qembed(f)
    torch.testing.assert_close(alpha.norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(model.qembed.probabilities(alpha).sum(-1), torch.ones(10))
    torch.testing.assert_close(quantum, ((f.norm(dim=-1) ** 2 - 1) ** 2).mean())


@pytest.mark.parametrize("arch", ["gpt", "qtg", "indra"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(arch: str) -> None:
    """Every token architecture has the switch (from the GPT): blocks are recomputed in
    backward (each runs twice), and loss and gradients do not change."""
    x = torch.randint(0, 50, (2, 16))
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_arch(arch, {**TINY, "activation_checkpointing": ckpt})
        calls: list[int] = []
        model.blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        logits, aux = model(x)
        loss = logits.square().mean() + sum(aux.values())
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(results[0], results[1])


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(("bad", "key"), [
    (dict(n_head=5), "n_embd"),
    (dict(topo_k=16), "topo_k"),
    (dict(topo_k=0), "topo_k"),
    (dict(topo_threshold=-1.0), "topo_threshold"),
    (dict(topo_filter="persistent"), "topo_filter"),
    (dict(attention="cosine"), "attention"),
    (dict(geo_gamma_init=0.0), "geo_gamma_init"),
    (dict(n_embd=33, n_head=3), "use_qembed"),
])
def test_invalid_config_fails_at_config_time_naming_the_key(bad: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"QTGConfig.*{key}|{key}.*QTGConfig"):
        QTGConfig(**{**TINY, **bad})


def test_negative_lambda_is_rejected_naming_the_key() -> None:
    from lit_models.language_model import LanguageModel

    with pytest.raises(ValueError, match=r"model\.loss_weights\.topo"):
        LanguageModel("qtg", TINY, loss_weights={"topo": -0.1, "geo": 0.05, "quantum": 0.01})


@pytest.mark.parametrize(("name", "nominal"), [("qtg_124m", 124e6), ("qtg_356m", 356e6)])
def test_named_sizes_are_within_5_percent(make_cfg, name: str, nominal: float) -> None:
    cfg = make_cfg([f"model={name}"])
    assert cfg.model.arch_config.vocab_size == 50257 and cfg.model.arch_config.block_size == 512
    with torch.device("meta"):
        module = instantiate(cfg.model, _convert_="all")
    n = module.net.num_params()  # parameters() counts the tied embedding/head once
    assert module.net.lm_head.weight is module.net.wte.weight
    assert abs(n / nominal - 1) <= 0.05, f"{name}: {n:,} parameters vs nominal {nominal:,.0f}"
    c = module.net.config
    assert 12 <= c.n_layer <= 24 and 512 <= c.n_embd <= 1024 and 8 <= c.n_head <= 16


# --------------------------------------------------------------------------- training
def test_loss_terms_are_logged_and_nan_stops_training_keeping_the_checkpoint(
        make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.train import train
    from lit_models.checkpoints import load_checkpoint

    cfg = make_cfg(["experiment=qtg_124m_tiny", "logger=csv", "trainer.max_steps=2",
                    "test=false", "trainer.log_every_n_steps=1", "trainer.accumulate_grad_batches=1",
                    "callbacks.model_checkpoint.every_n_train_steps=1"])
    metrics, objects = train(cfg)
    for term in ("topo", "geo", "quantum", "ce"):
        assert f"train/loss_{term}" in metrics
    assert "vram/estimate_gb" in metrics and "vram/peak_gb" in metrics

    real, calls = TopoFilter.forward, []

    def nan_from_third_step(self, x, start_pos=None):  # steps 1-2 fine, then a NaN topo term
        out, loss = real(self, x, start_pos)
        if self.training and x.device.type != "meta":  # not the FLOPs count on meta
            calls.append(1)
            if len(calls) >= 3:
                loss = loss * float("nan")
        return out, loss

    monkeypatch.setattr(TopoFilter, "forward", nan_from_third_step)
    cfg2 = make_cfg(["experiment=qtg_124m_tiny", "logger=csv", "trainer.max_steps=6",
                     "test=false", "trainer.accumulate_grad_batches=1",
                     "trainer.val_check_interval=100", "callbacks.model_checkpoint.monitor=null",
                     "callbacks.model_checkpoint.every_n_train_steps=1"], out="run2")
    with pytest.raises(FloatingPointError, match=r"\['topo'\]"):
        train(cfg2)
    ckpt = load_checkpoint(Path(cfg2.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2, "the last good step's checkpoint must be kept"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
