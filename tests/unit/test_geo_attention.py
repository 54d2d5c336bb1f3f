"""Fisher-Rao attention kernels (issue 20): the block-causal CPU path and FlexAttention's forward
give today's numbers (the one-block path and the plain-autograd reference), forward and gradients."""

from __future__ import annotations

import warnings

import pytest
import torch

from lit_models.archs import build_arch
from lit_models.components.geo_attention import (
    GeoAttentionFunction,
    flex_available,
    flex_geo_attention,
    geo_attention,
    geo_attention_reference,
    select_kernel,
    sqrt_probs,
)


def _inputs(t: int, s: int | None = None, b: int = 2, h: int = 3, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = s or t
    return (torch.randn(b, h, t, d, generator=g) * 2, torch.randn(b, h, s, d, generator=g) * 2,
            torch.randn(b, h, s, 5, generator=g), torch.tensor([0.5, 1.0, 3.0][:h]))


def _run(fn, q, k, v, gamma):
    """Output and gradients of q, k, v, gamma for a fixed random output weighting."""
    leaves = [x.clone().requires_grad_() for x in (q, k, v, gamma)]
    out = fn(sqrt_probs(leaves[0]), sqrt_probs(leaves[1]), leaves[2], leaves[3])
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * w).sum().backward()
    return [out.detach()] + [x.grad for x in leaves]


def _close(mine, theirs) -> None:
    for x, y in zip(mine, theirs, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(("t", "block"), [(9, 4), (37, 8), (16, 16), (40, 64)])
def test_block_causal_path_matches_the_full_one_and_plain_autograd(t: int, block: int) -> None:
    q, k, v, gamma = _inputs(t)
    blocked = _run(lambda a, b, v, g: GeoAttentionFunction.apply(a, b, v, g, 0, 1e-6, block), q, k, v, gamma)
    full = _run(lambda a, b, v, g: geo_attention(a, b, v, g, kernel="full"), q, k, v, gamma)
    reference = _run(geo_attention_reference, q, k, v, gamma)
    _close(blocked, reference)
    _close(full, reference)


def test_offset_queries_match_the_last_rows_of_a_full_pass() -> None:
    """Decoding with the KV cache: T queries at positions offset.. see keys 0..offset+i."""
    q, k, v, gamma = _inputs(7, 19)
    qfull = torch.cat([torch.randn(2, 3, 12, 8), q], dim=2)
    mine = _run(lambda a, b, v, g: GeoAttentionFunction.apply(a, b, v, g, 12, 1e-6, 3), q, k, v, gamma)
    ref = _run(lambda a, b, v, g: geo_attention_reference(
        torch.cat([sqrt_probs(qfull[:, :, :12]), a], dim=2), b, v, g)[:, :, 12:], q, k, v, gamma)
    _close(mine, ref)


def test_clamped_pairs_get_no_gradient_through_bc_as_in_the_reference() -> None:
    logits = torch.tensor([[30.0, -30.0, 0.0], [30.0, -30.0, 0.0], [0.0, 1.0, 2.0]])
    q = logits[None, None].expand(1, 2, 3, 3)  # two identical near-vertex rows: BC clamped
    v = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    gamma = torch.tensor([1.0, 2.0])
    mine = _run(lambda a, b, v, g: GeoAttentionFunction.apply(a, b, v, g, 0, 1e-6, 2), q, q, v, gamma)
    _close(mine, _run(geo_attention_reference, q, q, v, gamma))
    assert all(torch.isfinite(x).all() for x in mine)


def test_kernel_is_chosen_by_device_and_checked() -> None:
    q, k, v, gamma = _inputs(5)
    assert select_kernel(q, k, 0) == "blocked"
    assert select_kernel(q[:, :, -1:], k, 4) == "blocked"
    with pytest.raises(ValueError, match="kernel must be one of"):
        geo_attention(q, k, v, gamma, kernel="triton")
    with pytest.raises(ValueError, match="keys"):
        GeoAttentionFunction.apply(q, k, v, gamma, 2, 1e-6, 4)


def test_model_training_step_is_the_same_on_the_blocked_and_one_block_paths() -> None:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=32)
    model = build_arch("qtg", cfg)
    x = torch.randint(0, 50, (2, 24))
    grads = []
    for kernel in ("blocked", "full"):
        for block in model.blocks:
            block.attn.kernel = kernel
        model.zero_grad()
        logits, aux = model(x)
        (logits.square().mean() + aux["geo"]).backward()
        grads.append([logits.detach()] + [p.grad.clone() for p in model.parameters()])
    _close(grads[0], grads[1])


def test_flex_forward_on_cpu_matches_the_block_causal_path() -> None:
    """FlexAttention's no-grad forward (torch 2.13 on CPU refuses inputs that require grad; its
    backward is checked on CUDA by experiments/bench/gpu_suite.py)."""
    if not flex_available():
        pytest.skip("this torch has no torch.nn.attention.flex_attention")
    q, k, v, gamma = _inputs(40, d=16)
    a, b = sqrt_probs(q), sqrt_probs(k)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile()": the unfused CPU path
        try:
            flex = flex_geo_attention(a, b, v, gamma)
        except (NotImplementedError, RuntimeError) as err:
            pytest.skip(f"FlexAttention forward unavailable on CPU in this torch: {err}")
        blocked = geo_attention(a, b, v, gamma, kernel="blocked")
    torch.testing.assert_close(flex, blocked, rtol=1e-4, atol=2e-5)
