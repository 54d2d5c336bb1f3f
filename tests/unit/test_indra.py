"""IndraQuantum architecture and the distillation losses / recipe arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_models.archs import TeacherSignal, build_arch
from lit_models.archs.indra import (
    IndraConfig,
    QuantumProjector,
    phase_dispersion,
    phase_mag_losses,
    teacher_targets,
)
from lit_models.distillation import DistillationModel, kd_loss
from lit_models.generation import generate

TINY = {"vocab_size": 50, "block_size": 16, "d_model": 24, "n_layer": 2, "n_head": 2, "n_embd": 16}


def test_projector_shapes_and_positive_magnitude() -> None:
    proj = QuantumProjector(24, 8)
    h = torch.randn(3, 5, 24) * 50  # large inputs: softplus must stay > 0, never NaN
    with torch.no_grad():
        proj.magnitude.bias.fill_(-30.0)  # pre-activations far below zero
    z, magnitude, phase = proj(h)
    assert z.shape == (3, 5, 16) and magnitude.shape == phase.shape == (3, 5, 8)
    assert torch.all(magnitude > 0) and torch.isfinite(z).all()
    torch.testing.assert_close(torch.complex(z[..., :8], z[..., 8:]),
                               torch.polar(magnitude, phase))  # Z = M e^{iP} as [Re, Im]


def _teacher(idx: torch.Tensor) -> TeacherSignal:
    torch.manual_seed(1)
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[:, :3] = False  # e.g. a prompt: not labelled
    return TeacherSignal(torch.randn(*idx.shape, 50) * 3, mask)


def test_phase_mag_terms_are_aux_losses_given_a_teacher() -> None:
    """The forward returns the alignment terms of its own state; no teacher, no terms."""
    idx = torch.randint(0, 50, (2, 10))
    net = build_arch("indra", TINY)
    logits, aux = net(idx)
    assert logits.shape == (2, 10, 50) and aux == {}
    teacher = _teacher(idx)
    with_teacher, aux = net(idx, teacher=teacher)
    torch.testing.assert_close(with_teacher, logits)
    _, magnitude, phase = net.project_tokens(idx)
    assert magnitude.shape == phase.shape == (2, 10, 8) and torch.all(magnitude > 0)
    l_phase, l_mag = phase_mag_losses(magnitude, phase, teacher.logits, teacher.mask)
    assert list(aux) == ["phase", "mag"] and aux["phase"].requires_grad
    torch.testing.assert_close((aux["phase"], aux["mag"]), (l_phase, l_mag))
    diagnostics = net.diagnostics(idx, teacher.mask)  # what the recipe logs, no gradient
    torch.testing.assert_close(diagnostics["phase_dispersion"],
                               phase_dispersion(phase)[teacher.mask].mean())
    assert not diagnostics["mag_salience"].requires_grad
    real = build_arch("indra", {**TINY, "projector": "real"})
    assert real(idx, teacher=teacher)[1] == {} and real.diagnostics(idx, teacher.mask) == {}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # no trainer: not logged
def test_distillation_weights_the_students_teacher_terms() -> None:
    """KD, phase and mag with the kd weights x pm_weight, in the order they were always added."""
    torch.manual_seed(0)
    module = DistillationModel(**ARGS, kd={"weight": 0.3, "phase_weight": 0.7, "mag_weight": 2.0})
    module.pm_weight = 0.5
    idx = torch.randint(0, 50, (2, 10))
    teacher = _teacher(idx)
    batch = {"input_ids": idx, "labels": torch.where(teacher.mask, idx, -100)}
    logits, _, aux = module._loss(batch, teacher)
    terms = module.weighted_terms(batch, logits, aux, teacher)
    assert list(terms) == ["kd", "phase", "mag"]
    assert [w for w, _ in terms.values()] == [0.3, 0.5 * 0.7, 0.5 * 2.0]
    torch.testing.assert_close(terms["kd"][1], kd_loss(logits, teacher.logits, 2.0, teacher.mask))
    assert terms["phase"][1] is aux["phase"] and terms["mag"][1] is aux["mag"]
    assert module.weighted_terms(batch, *module._loss(batch)[::2], None) == {}  # CE-only ablation


@pytest.mark.parametrize("tie", [True, False])
def test_real_projector_baseline_has_equal_parameter_count(tie: bool) -> None:
    cfg = {**TINY, "tie_embeddings": tie}
    complex_net, real_net = build_arch("indra", cfg), build_arch("indra", {**cfg, "projector": "real"})
    assert sum(p.numel() for p in complex_net.projector.parameters()) == \
        sum(p.numel() for p in real_net.projector.parameters())
    assert complex_net.num_params() == real_net.num_params()


def test_tied_head_is_the_complex_inner_product_with_each_tokens_state() -> None:
    net = build_arch("indra", TINY).eval()
    idx = torch.randint(0, 50, (1, 4))
    with torch.no_grad():
        logits, _ = net(idx)
        captured = {}
        hook = net.ln_f.register_forward_hook(lambda m, i, o: captured.setdefault("u", o))
        net(idx)
        hook.remove()
        u = captured["u"]
        zv, m_v, p_v = net.project(net.wte.weight)
        u_c = torch.complex(u[..., :8], u[..., 8:])
        expected = (u_c.unsqueeze(-2) * torch.polar(m_v, p_v).conj()).sum(-1).real / math.sqrt(16)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("projector", ["complex", "real"])
def test_kv_cache_generation_matches_full_recompute(projector: str) -> None:
    torch.manual_seed(0)
    net = build_arch("indra", {**TINY, "projector": projector})
    idx = torch.randint(0, 50, (2, 3))
    a = generate(net, idx, 20, temperature=0, use_cache=True)  # slides past block_size=16
    b = generate(net, idx, 20, temperature=0, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("change", "message"), [
    ({"n_embd": 15, "n_head": 3}, "must be even"),
    ({"projector": "quaternion"}, "projector must be one of"),
    ({"d_model": 0}, "d_model must be a positive int"),
    ({"n_head": 5}, "divisible by n_head"),  # GPTConfig's own checks still apply
])
def test_config_errors_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IndraConfig(**{**TINY, **change})


def test_phase_dispersion_limits() -> None:
    aligned = torch.full((1, 8), 0.7)
    spread = torch.arange(8.0).unsqueeze(0) * 2 * math.pi / 8
    assert phase_dispersion(aligned).item() == pytest.approx(0.0, abs=1e-5)
    assert phase_dispersion(spread).item() == pytest.approx(1.0, abs=1e-5)


def test_kd_loss_equals_hand_computed_value() -> None:
    # One token, vocabulary of 2, T = 2: p_t = softmax([0, 2] / 2), p_s = softmax([0, 0] / 2).
    s, t = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    pt1, pt2 = 1 / (1 + math.e), math.e / (1 + math.e)
    kl = pt1 * math.log(pt1 / 0.5) + pt2 * math.log(pt2 / 0.5)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert kd_loss(s, t, 2.0, mask).item() == pytest.approx(4 * kl, rel=1e-6)
    # equal to the T^2-scaled KL of torch's own kl_div
    ref = 4 * F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True,
                       reduction="sum")
    assert kd_loss(s, t, 2.0, mask).item() == pytest.approx(ref.item(), rel=1e-6)


def test_kd_loss_ignores_masked_positions() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = kd_loss(s, t, 1.5, mask)
    s2, t2 = s.clone(), t.clone()
    s2[~mask], t2[~mask] = 100.0, -100.0  # garbage where labels are -100 (padding / prompts)
    assert kd_loss(s2, t2, 1.5, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    assert kd_loss(t, t, 1.5, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_targets_and_phase_mag_losses_by_hand() -> None:
    uniform, peaked = torch.zeros(1, 1, 4), torch.tensor([[[0.0, 0.0, 0.0, 50.0]]])
    confidence, entropy = teacher_targets(uniform)
    assert confidence.item() == pytest.approx(0.25) and entropy.item() == pytest.approx(1.0)
    confidence, entropy = teacher_targets(peaked)
    assert confidence.item() == pytest.approx(1.0) and entropy.item() == pytest.approx(0.0, abs=1e-6)
    # student: aligned phases (dispersion 0), magnitudes with tanh(mean M) = 0.5
    magnitude = torch.full((1, 1, 6), math.atanh(0.5))
    phase = torch.zeros(1, 1, 6)
    mask = torch.ones(1, 1, dtype=torch.bool)
    l_phase, l_mag = phase_mag_losses(magnitude, phase, uniform, mask)
    assert l_phase.item() == pytest.approx((0.0 - 1.0) ** 2, abs=1e-5)
    assert l_mag.item() == pytest.approx((0.5 - 0.25) ** 2, abs=1e-6)


ARGS = {"arch": "indra", "arch_config": TINY}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kd": {"temperature": 0.0}}, "temperature must be > 0"),
    ({"kd": {"temperature": -1.0}}, "temperature must be > 0"),
    ({"kd": {"weight": -0.1}}, "kd.weight must be >= 0"),
    ({"kd": {"phase_weight": float("nan")}}, "finite"),
    ({"kd": {"temprature": 2.0}}, "unknown key"),
    ({"teacher": {"kind": "platform", "path": None}}, "teacher.path is not set"),
    ({"teacher": {"kind": "onnx", "path": "x"}}, "teacher.kind must be one of"),
    ({"teacher": {"path": "x", "dtype": "int8"}}, "teacher.dtype must be one of"),
])
def test_distillation_arguments_are_checked_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationModel(**ARGS, **kwargs)


def test_distillation_hparams_are_plain_and_complete() -> None:
    module = DistillationModel(**ARGS, teacher={"path": "/nowhere/t.ckpt"}, kd={"weight": 0.02})
    hp = module.hparams
    assert hp.teacher == {"kind": "platform", "path": "/nowhere/t.ckpt", "dtype": "float32",
                          "verify_tokenizer": True}
    assert hp.kd["weight"] == 0.02 and hp.kd["temperature"] == 2.0
    assert module.kd_weight == 0.02 and module.pm_weight == 1.0
    assert module.teacher is None  # loaded when fitting starts, not at construction
    again = DistillationModel(**dict(hp))  # what load_from_checkpoint does
    assert again.hparams == hp
