"""model.compile (issue 20): torch.compile of every token architecture gives the eager loss and
gradients; the network, its checkpoint keys and generation stay eager and unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lhp.errors import UserError
from lit_models.distillation import DistillationModel
from lit_models.language_model import LanguageModel

TINY = dict(vocab_size=48, block_size=16, n_layer=1, n_head=2, n_embd=32)
ARCHS = {"gpt": ("gpt", {}), "qtg": ("qtg", {"topo_k": 2}), "indra": ("indra", {"d_model": 32}),
         "phm_gpt": ("gpt", {"linear": "phm", "phm_n": 2})}


def _loss_and_grads(model: LanguageModel, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    logits, aux = model.step_network()(x)
    loss = F.cross_entropy(logits.flatten(0, 1), x.roll(-1, 1).flatten()) + sum(aux.values())
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _pair(name: str, backend: str | bool, cls=LanguageModel, **extra) -> list[list[torch.Tensor]]:
    arch, cfg = ARCHS[name]
    x = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]),
                      generator=torch.Generator().manual_seed(0))
    out = []
    for setting in (False, backend):
        torch.manual_seed(0)
        model = cls(arch, {**TINY, **cfg}, compile=setting, **extra)
        out.append(_loss_and_grads(model, x))
        out[-1].append(model)
    return out


@pytest.mark.parametrize("name", ["qtg"])
def test_compiled_network_gives_the_eager_loss_and_gradients(name: str) -> None:
    """Dynamo + AOT autograd trace of the whole network (aot_eager: no C++ code generation, so
    it stays fast in CI; inductor itself is the slow test below). QTG: custom autograd.Function,
    topological filter; the GPT's compiled loss is checked by the GPU suite's --tiny test."""
    (*eager, eager_model), (*compiled, model) = _pair(name, "aot_eager")
    assert len(eager) == len(compiled) > 1
    for mine, theirs in zip(compiled, eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert model.step_network() is not model.net
    assert list(model.state_dict()) == list(eager_model.state_dict())  # no _orig_mod. prefix


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt", "indra", "phm_gpt"])
def test_compiled_gpt_indra_and_phm_give_the_eager_loss(name: str) -> None:
    (*eager, _), (*compiled, _) = _pair(name, "aot_eager")
    for mine, theirs in zip(compiled, eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compile_gives_the_eager_loss() -> None:
    """``model.compile=true``: inductor's generated C++ kernels (about a minute on 2 cores)."""
    (*eager, _), (*compiled, _) = _pair("gpt", True)
    for mine, theirs in zip(compiled, eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_compile_setting_is_checked_and_distillation_passes_it_on() -> None:
    with pytest.raises(UserError, match="model.compile must be"):
        LanguageModel("gpt", TINY, compile="not-a-backend")
    model = DistillationModel("indra", {**TINY, "d_model": 32}, compile="aot_eager")
    assert model.hparams.compile == "aot_eager"
    eager = LanguageModel("gpt", TINY)
    assert eager.step_network() is eager.net
