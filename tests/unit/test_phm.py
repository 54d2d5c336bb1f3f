"""PHM layers: Kronecker structure, parameter count, gradients, dense fit, and the GPT switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_models.archs import build_arch
from lit_models.archs.gpt import GPTConfig
from lit_models.components.phm import PHMLinear, make_linear
from lit_models.compression.quaternion import hamilton

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_weight_is_a_sum_of_kronecker_products_and_forward_matches() -> None:
    layer = PHMLinear(12, 8, n=4)
    expected = sum(torch.kron(layer.rule[i], layer.kernels[i]) for i in range(4))
    torch.testing.assert_close(layer.weight, expected)
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(layer(x), x @ expected.t() + layer.bias)


@pytest.mark.parametrize(("fin", "fout", "n"), [(320, 1280, 4), (64, 192, 4), (12, 6, 2), (9, 9, 3)])
def test_parameter_count_is_about_one_over_n(fin: int, fout: int, n: int) -> None:
    layer = PHMLinear(fin, fout, n=n)
    assert sum(p.numel() for p in layer.parameters()) == n**3 + fin * fout // n + fout
    assert PHMLinear(fin, fout, n=n, bias=False).bias is None


def test_gradients_reach_rule_kernels_and_bias_and_match_finite_differences() -> None:
    layer = PHMLinear(8, 4, n=4).double()
    x = torch.randn(2, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r, k, b: nn.functional.linear(
        x, torch.einsum("iab,irs->arbs", r, k).reshape(4, 8), b),
        (layer.rule.detach().requires_grad_(), layer.kernels.detach().requires_grad_(),
         layer.bias.detach().requires_grad_()))
    layer(x).pow(2).sum().backward()
    for p in layer.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_quaternion_rule_gives_hamilton_product() -> None:
    """With A_i the left-multiplication matrices of 1, i, j, k, PHM(n=4) is quaternion algebra."""
    basis = torch.eye(4, dtype=torch.float64)
    layer = PHMLinear(4, 4, n=4, bias=False).double()
    with torch.no_grad():
        # column b of A_i: coefficients of e_i * e_b, so (sum_i s_i A_i) x = s * x (Hamilton)
        layer.rule.copy_(torch.stack([torch.stack([hamilton(basis[i], basis[b]) for b in range(4)], 1)
                                      for i in range(4)]))
        s = torch.randn(4, dtype=torch.float64)
        layer.kernels.copy_(s.reshape(4, 1, 1))
    x = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), hamilton(s, x))


def test_from_dense_is_exact_on_kronecker_sums_and_optimal_otherwise() -> None:
    rule, kernels = torch.randn(4, 4, 4), torch.randn(4, 3, 5)
    dense = nn.Linear(20, 12)
    with torch.no_grad():
        dense.weight.copy_(sum(torch.kron(rule[i], kernels[i]) for i in range(4)))
    fitted = PHMLinear.from_dense(dense, n=4)
    torch.testing.assert_close(fitted.weight, dense.weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fitted.bias, dense.bias)
    noisy = nn.Linear(20, 12)
    best = float((PHMLinear.from_dense(noisy).weight - noisy.weight).detach().norm())
    for seed in range(5):  # random PHM layers fitted by a few gradient steps do no better
        torch.manual_seed(seed)
        other = PHMLinear(20, 12)
        opt = torch.optim.Adam(other.parameters(), lr=0.05)
        for _ in range(200):
            opt.zero_grad()
            (other.weight - noisy.weight.detach()).pow(2).sum().backward()
            opt.step()
        assert float((other.weight - noisy.weight).detach().norm()) >= best - 1e-4


def test_bad_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="divisible by n=4"):
        PHMLinear(10, 8)
    with pytest.raises(ValueError, match="linear kind"):
        make_linear(4, 4, kind="sparse")
    with pytest.raises(ValueError, match="phm_n=3 must divide n_embd=32"):
        GPTConfig(**TINY, linear="phm", phm_n=3)
    with pytest.raises(ValueError, match="GPTConfig.linear"):
        GPTConfig(**TINY, linear="quaternion")


def test_gpt_switch_uses_phm_everywhere_and_dense_stays_unchanged() -> None:
    torch.manual_seed(0)
    dense = build_arch("gpt", TINY)
    torch.manual_seed(0)
    default = build_arch("gpt", {**TINY, "linear": "dense", "phm_n": 4})
    for (k, a), (_, b) in zip(dense.state_dict().items(), default.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    phm = build_arch("gpt", {**TINY, "linear": "phm"})
    phm_layers = [m for m in phm.modules() if isinstance(m, PHMLinear)]
    assert len(phm_layers) == 4 * TINY["n_layer"]  # qkv, proj, fc, proj per block
    assert not any(isinstance(m, nn.Linear) for m in phm.blocks.modules())
    block_params = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.startswith("blocks"))  # noqa: E731
    assert block_params(phm) < 0.3 * block_params(dense)
    x = torch.randint(0, 50, (2, 12))
    logits, _ = phm(x)
    logits.sum().backward()
    assert all(p.grad is not None for p in phm.parameters())
    phm.eval()
    full, _ = phm(x)
    phm.setup_kv_cache(2, 16)
    step = torch.cat([phm(x[:, :5], start_pos=0)[0], phm(x[:, 5:], start_pos=5)[0]], dim=1)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
