"""Knowledge distillation recipe ("v4 unified" of seeds/indraquantum_phase2.md) for any student.

Loss = CE + kd_weight * KD + pm_weight * (phase_weight * L_phase + mag_weight * L_mag), every
term over the positions the datamodule labels (``labels != -100``: padding and, with
``response_only_loss``, prompts are left out), each logged as ``train/loss_<name>``.

- KD (Hinton et al. 2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))`` per token, mean over
  labelled tokens; ``T^2`` keeps its gradient scale independent of the temperature ``T``.
- L_phase, L_mag: the student architecture's teacher-aligned terms, returned by its forward
  as aux losses when it gets the teacher's ``TeacherSignal`` (only the complex projector of
  ``lit_models.archs.indra`` has them; see ``phase_mag_losses`` there). The student's
  ``diagnostics`` (Indra: ``mag_salience``, ``phase_dispersion``) are logged as ``train/<name>``.

``kd_weight`` and ``pm_weight`` are plain attributes (from ``kd.weight`` and 1.0) so that
``callbacks.kd_curriculum.KDCurriculum`` can schedule them; ``teacher=None`` turns every teacher
term off (the CE-only ablation through the same code path).

The teacher is any causal LM with the student's vocabulary: a platform checkpoint
(``kind: platform``, loaded with ``weights_only=True``; its architecture and tokenizer come from
the checkpoint) or a Hugging Face causal LM in a local directory (``kind: hf``, never
downloaded; its ``tokenizer.json`` must match the data's tokenizer). It is loaded when fitting
starts (so evaluation/generation of a student checkpoint never needs it), frozen
(``requires_grad=False``), kept in eval mode, optionally in lower precision (``dtype``), and
held outside the module tree: it is not in the optimizer, not moved by ``model.train()`` and
not saved in the student's checkpoints. Its logits are computed on the fly under
``torch.no_grad`` for each training batch: a full-vocabulary logit cache would take
``vocab_size`` floats per training token on disk, and the teacher is small enough to run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lhp.config_check import to_plain
from lit_models.archs import TeacherSignal
from lit_models.archs.indra import masked_mean, teacher_targets
from lit_models.language_model import IGNORE_INDEX, LanguageModel

KD_DEFAULTS: dict[str, float] = {"temperature": 2.0, "weight": 0.05, "phase_weight": 1.0,
                                 "mag_weight": 1.0}
TEACHER_DEFAULTS: dict[str, Any] = {"kind": "platform", "path": None, "dtype": "float32",
                                    "verify_tokenizer": True}
TEACHER_KINDS = ("platform", "hf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEACHER_TERMS = ("phase", "mag")  # aux terms of the student weighted by model.kd, not loss_weights


# --------------------------------------------------------------------------- losses
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` summed over the vocabulary, averaged over the
    positions where ``mask`` is true."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return temperature**2 * masked_mean(kl, mask)


# --------------------------------------------------------------------------- teachers
class _PlatformTeacher(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)[0]


def teacher_flops_per_token(teacher: nn.Module, seq_len: int, batch_tokens: int) -> float:
    """The teacher's forward FLOPs per training token (no backward: it runs without gradient):
    a platform teacher's analytic count, else 2 FLOPs per parameter (the usual dense estimate)."""
    config = getattr(getattr(teacher, "net", None), "config", None)
    if config is not None and hasattr(config, "flops_terms"):
        return float(sum(f for f, _ in config.flops_terms(seq_len, batch_tokens).values()))
    return 2.0 * sum(p.numel() for p in teacher.parameters())


class _HFTeacher(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx).logits


def _vocab_signature(tokenizer: Any) -> Any:
    """What must be equal for two tokenizers to give the same ids: the token -> id map
    (Hugging Face tokenizers) or the spec (byte tokenizer)."""
    hf_tok = getattr(tokenizer, "hf_tokenizer", None)
    return hf_tok.get_vocab(with_added_tokens=True) if hf_tok is not None else tokenizer.to_dict()


def _check_same_tokenizer(teacher_tok: Any, data_tok: Any, where: str) -> None:
    if _vocab_signature(teacher_tok) != _vocab_signature(data_tok):
        raise ValueError(
            f"{where}: the teacher's tokenizer ({teacher_tok!r}) is not the data's ({data_tok!r}): "
            "teacher and student must share one vocabulary (train the teacher on the same "
            "data.tokenizer, e.g. experiment=indra_teacher)")


def load_teacher(spec: Mapping[str, Any], vocab_size: int, tokenizer: Any | None,
                 block_size: int | None) -> nn.Module:
    """Build the frozen teacher of ``spec`` and check it against the student: output size
    ``vocab_size``, same tokenizer as the data, context of at least ``block_size`` tokens."""
    from datamodules.tokenizers import build_tokenizer, load_pretrained

    path = Path(str(spec["path"])).expanduser()
    key = "model.teacher.path"
    if spec["kind"] == "platform":
        if not path.is_file():
            raise FileNotFoundError(f"{key}: teacher checkpoint {path} does not exist; train one "
                                    "first (experiment=indra_teacher) or point to a .ckpt file")
        from lit_models.checkpoints import load_net  # registered classes only, weights_only=True

        net, meta = load_net(path, "tokens", key)
        out_size, context = net.config.vocab_size, getattr(net.config, "block_size", None)
        tok_spec = meta.get("tokenizer")
        if spec["verify_tokenizer"] and tokenizer is not None:
            if tok_spec is None:
                raise ValueError(f"{key}: {path} stores no tokenizer, so its vocabulary cannot be "
                                 "checked; set model.teacher.verify_tokenizer=false to skip")
            _check_same_tokenizer(build_tokenizer(tok_spec), tokenizer, f"{key}={path}")
        teacher: nn.Module = _PlatformTeacher(net)
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"{key}: Hugging Face teacher directory {path} does not exist "
                                    "(a local save_pretrained directory; nothing is downloaded)")
        try:
            from transformers import AutoModelForCausalLM
        except ModuleNotFoundError as err:
            from lhp.errors import UserError
            raise UserError(f"{key}: a Hugging Face teacher needs transformers, the optional 'hf' "
                            "extra: pip install -e '.[hf]'") from err

        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        out_size = model.get_output_embeddings().weight.size(0)
        context = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None)
        if spec["verify_tokenizer"] and tokenizer is not None:
            if not (path / "tokenizer.json").is_file():
                raise ValueError(f"{key}: {path} has no tokenizer.json to check against the "
                                 "data's tokenizer; set model.teacher.verify_tokenizer=false to skip")
            _check_same_tokenizer(load_pretrained(path), tokenizer, f"{key}={path}")
        teacher = _HFTeacher(model)
    if out_size != vocab_size:
        raise ValueError(f"{key}={path}: the teacher predicts {out_size} token ids but the student "
                         f"{vocab_size}; they must share one vocabulary")
    if block_size is not None and context is not None and context < block_size:
        raise ValueError(f"{key}={path}: the teacher's context ({context} tokens) is shorter than "
                         f"data.block_size={block_size}")
    teacher = teacher.to(DTYPES[spec["dtype"]]).eval()
    teacher.requires_grad_(False)
    return teacher


# --------------------------------------------------------------------------- recipe
class DistillationModel(LanguageModel):
    """``LanguageModel`` (student, eval metrics, optimizer, resume) plus a frozen teacher.

    Args (besides ``LanguageModel``'s):
        teacher: ``kind`` (``platform`` | ``hf``), ``path``, ``dtype`` (``float32`` |
            ``bfloat16`` | ``float16``), ``verify_tokenizer``; null: no teacher (CE only).
        kd: ``temperature`` (> 0), ``weight`` (lambda_kd, a curriculum may override it),
            ``phase_weight``, ``mag_weight`` (lambda_phase, lambda_mag), all >= 0.
        compile: as ``LanguageModel``'s (the student only; the teacher runs eagerly).
    """

    def __init__(
        self,
        arch: str,
        arch_config: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        teacher: Mapping[str, Any] | None = None,
        kd: Mapping[str, float] | None = None,
        compile: bool | str = False,
    ) -> None:
        super().__init__(arch, arch_config, optimizer, scheduler, loss_weights, compile)
        teacher, kd = to_plain(teacher), to_plain(kd)
        unknown = sorted(set(kd or {}) - set(KD_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in model.kd; expected some of {sorted(KD_DEFAULTS)}")
        kd = {**KD_DEFAULTS, **(kd or {})}
        for name, value in kd.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"model.kd.{name} must be a finite number, got {value!r}")
            if value < 0 or (name == "temperature" and value <= 0):
                raise ValueError(f"model.kd.{name} must be {'> 0' if name == 'temperature' else '>= 0'}"
                                 f", got {value!r}")
        if teacher is not None:
            unknown = sorted(set(teacher) - set(TEACHER_DEFAULTS))
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} in model.teacher; expected some of "
                                 f"{sorted(TEACHER_DEFAULTS)}")
            teacher = {**TEACHER_DEFAULTS, **teacher}
            if teacher["kind"] not in TEACHER_KINDS:
                raise ValueError(f"model.teacher.kind must be one of {TEACHER_KINDS}, got {teacher['kind']!r}")
            if not teacher["path"]:
                raise ValueError("model.teacher.path is not set: give the teacher checkpoint "
                                 "(kind: platform) or Hugging Face directory (kind: hf), or set "
                                 "model.teacher=null for CE only")
            if teacher["dtype"] not in DTYPES:
                raise ValueError(f"model.teacher.dtype must be one of {sorted(DTYPES)}, got {teacher['dtype']!r}")
        self.save_hyperparameters({**self.hparams, "teacher": teacher, "kd": kd}, logger=False)
        self.kd_weight = float(kd["weight"])   # scheduled by callbacks.kd_curriculum
        self.pm_weight = 1.0                   # multiplier of the phase/magnitude terms
        self._teacher: list[nn.Module] = []    # a list: outside the module tree (see module doc)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        spec = self.hparams.teacher
        if stage == "fit" and spec is not None and not self._teacher:
            dm = getattr(self.trainer, "datamodule", None)
            self._teacher = [load_teacher(spec, self.hparams.arch_config["vocab_size"],
                                          getattr(dm, "tokenizer", None),
                                          getattr(dm, "block_size", None))]
            if self.flops_per_token:
                self.flops_per_token += teacher_flops_per_token(
                    self.teacher, dm.block_size, dm.batch_size * dm.block_size)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def teacher_signal(self, batch: Mapping[str, torch.Tensor]) -> TeacherSignal | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            teacher_logits = self.teacher(batch["input_ids"]).float()
        return TeacherSignal(teacher_logits, batch["labels"] != IGNORE_INDEX)

    def weighted_terms(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor,
                       aux: Mapping[str, torch.Tensor], teacher: TeacherSignal | None
                       ) -> dict[str, tuple[float, torch.Tensor]]:
        mask = batch["labels"] != IGNORE_INDEX
        diagnostics = self.net.diagnostics(batch["input_ids"], mask)
        if diagnostics:  # monitored in every run, with or without a teacher
            self.log_dict({f"train/{k}": v for k, v in diagnostics.items()}, on_step=True)
        own = {k: v for k, v in aux.items() if k not in TEACHER_TERMS}
        terms = super().weighted_terms(batch, logits, own, teacher)
        if teacher is None:
            return terms
        kd = self.hparams.kd
        terms["kd"] = (self.kd_weight, kd_loss(logits, teacher.logits, kd["temperature"], mask))
        for name in TEACHER_TERMS:
            if name in aux:
                terms[name] = (self.pm_weight * kd[f"{name}_weight"], aux[name])
        if any(name in aux for name in TEACHER_TERMS):
            confidence, entropy = teacher_targets(teacher.logits)
            self.log_dict({"train/teacher_confidence": masked_mean(confidence, mask),
                           "train/teacher_entropy": masked_mean(entropy, mask)}, on_step=True)
        return terms
