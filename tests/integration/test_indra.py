"""IndraQuantum distillation end to end on the fixture WikiText + Alpaca mix: a tiny KD run
from a platform teacher (and from a local Hugging Face model), its metrics, frozen teacher,
exact resume, generation, the monitor PNG (``lhp compare --preset indra``), and the start-up
errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from analysis.runs import load_run
from datamodules.tokenizers import build_tokenizer
from experiments.compare import main as compare_main
from experiments.evaluate import evaluate
from experiments.generate import generate_text
from experiments.train import train
from lit_models.archs import make_config
from tests.conftest import compose_config

KD = ["experiment=indra_kd_tiny", "logger=csv", "trainer.log_every_n_steps=1"]


def kd_cfg(teacher: Path, out: Path, data_dir: Path, extra: list[str] = ()) -> object:
    return compose_config("train", [*KD, f"model.teacher.path={teacher}", *extra], out, data_dir)


@pytest.fixture(scope="module")
def kd_run(tiny_teacher: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("indra_kd") / "run"
    metrics, objects = train(kd_cfg(tiny_teacher, out, data_dir, ["trainer.max_steps=10"]))
    with open(next(out.glob("csv/version_*/metrics.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"out": out, "metrics": metrics, "model": objects["model"],
            "trainer": objects["trainer"], "rows": rows}


def test_kd_run_logs_every_term_and_the_curriculum(kd_run: dict) -> None:
    columns = set(kd_run["rows"][0])
    for column in ("train/loss", "train/loss_ce", "train/loss_kd", "train/loss_phase",
                   "train/loss_mag", "kd/weight", "train/mag_salience", "train/phase_dispersion",
                   "train/teacher_confidence", "train/teacher_entropy", "val/loss", "test/loss"):
        assert column in columns, column
    steps = [r for r in kd_run["rows"] if r.get("train/loss_kd")]
    assert len(steps) == 10
    for step, row in enumerate(steps):
        weight = float(row["kd/weight"])
        assert weight == pytest.approx(0.01 + 0.04 * step / 10)  # linear over max_steps=10
        total = (float(row["train/loss_ce"]) + weight * float(row["train/loss_kd"])
                 + float(row["train/loss_phase"]) + float(row["train/loss_mag"]))
        assert float(row["train/loss"]) == pytest.approx(total, rel=1e-5)
        assert 0.0 <= float(row["train/loss_phase"]) <= 1.0 and float(row["train/loss_kd"]) > 0


def test_teacher_is_frozen_and_outside_the_student(kd_run: dict, tiny_teacher: Path) -> None:
    model, trainer = kd_run["model"], kd_run["trainer"]
    teacher = model.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert all(k.startswith("net.") for k in model.state_dict())
    ckpt = torch.load(kd_run["out"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    # the teacher's weights are exactly the ones it was loaded with
    original = torch.load(tiny_teacher, weights_only=True)["state_dict"]
    for name, p in teacher.net.state_dict().items():
        assert torch.equal(p, original[f"net.{name}"]), name


def test_kd_flops_count_the_teacher_forward(kd_run: dict) -> None:
    model, dm = kd_run["model"], kd_run["trainer"].datamodule
    student = make_config(model.hparams.arch, model.hparams.arch_config)
    seq, batch_tokens = dm.block_size, dm.batch_size * dm.block_size
    teacher_forward = sum(f for f, _ in model.teacher.net.config.flops_terms(seq, batch_tokens).values())
    assert teacher_forward > 0
    assert model.flops_per_token == pytest.approx(
        student.training_flops_per_token(seq, batch_tokens) + teacher_forward)


def test_student_generates_from_its_checkpoint(kd_run: dict, tmp_path: Path) -> None:
    ckpt = kd_run["out"] / "checkpoints" / "last.ckpt"
    cfg = compose_config("generate", [f"ckpt_path={ckpt}", "prompt=The future of AI is",
                                      "temperature=0", "max_new_tokens=12"], tmp_path / "gen")
    texts = generate_text(cfg)
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_student_evaluates_without_loading_its_teacher(kd_run: dict, data_dir: Path,
                                                       tmp_path: Path) -> None:
    ckpt = kd_run["out"] / "checkpoints" / "last.ckpt"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "logger=csv", "trainer.limit_val_batches=2",
                                  "trainer.limit_test_batches=2"], tmp_path / "eval", data_dir)
    metrics, objects = evaluate(cfg)
    assert objects["model"].teacher is None  # only fitting loads it
    assert metrics["val/loss"] > 0 and metrics["test/alpaca_ppl"] > 1


def test_monitor_png_from_the_csv_logs(kd_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "monitor"
    assert compare_main([str(kd_run["out"]), "--preset", "indra", "--smooth", "3",
                         "--out", str(out)]) == 0
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    series = load_run(kd_run["out"]).series
    assert len(series["train/loss_kd"][0]) == 10 and len(series["kd/weight"][0]) == 10
    with pytest.raises(SystemExit) as done:
        compare_main([str(tmp_path / "nothing"), "--preset", "indra", "--out", str(out)])
    assert done.value.code == 2


def test_kd_resume_reproduces_the_uninterrupted_run(tiny_teacher: Path, data_dir: Path,
                                                    tmp_path: Path) -> None:
    """Stop early (token budget), resume: final weights equal the uninterrupted run's bitwise
    (teacher reloaded, curriculum state restored, same data order and RNG)."""
    common = ["trainer.max_steps=10", "test=false", "callbacks.model_checkpoint.every_n_train_steps=1"]

    def run(name: str, extra: list[str]) -> dict:
        return train(kd_cfg(tiny_teacher, tmp_path / name, data_dir, common + extra))[1]

    full = run("full", [])
    first = run("first", ["callbacks.token_budget.max_tokens=2000"])
    assert 0 < first["trainer"].global_step < 10
    resumed = run("resumed", [f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"])
    assert resumed["trainer"].global_step == 10
    assert resumed["model"].kd_weight == full["model"].kd_weight
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


def test_teacher_of_another_vocabulary_is_refused_at_start(tiny_teacher: Path, data_dir: Path,
                                                           tmp_path: Path) -> None:
    other_vocab = ["data.tokenizer.vocab_size=350", "trainer.max_steps=2"]
    with pytest.raises(ValueError, match="teacher's tokenizer .* is not the data's"):
        train(kd_cfg(tiny_teacher, tmp_path / "a", data_dir, other_vocab))
    with pytest.raises(ValueError, match="teacher predicts 400 token ids but the student 350"):
        train(kd_cfg(tiny_teacher, tmp_path / "b", data_dir,
                     [*other_vocab, "model.teacher.verify_tokenizer=false"]))
    assert not list(tmp_path.rglob("*.ckpt")), "nothing may be trained or written"


def test_missing_teacher_is_named(data_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_teacher.ckpt"
    with pytest.raises(FileNotFoundError, match="no_teacher.ckpt"):
        train(kd_cfg(missing, tmp_path / "run", data_dir, ["trainer.max_steps=2"]))


def _hf_teacher(path: Path, tokenizer_spec: dict, vocab_size: int, with_tokenizer: bool = True) -> Path:
    """A randomly initialised GPT-2 saved like a Hugging Face download (nothing downloaded)."""
    transformers = pytest.importorskip("transformers", reason="needs the optional 'hf' extra: pip install -e '.[hf]'")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(path)
    if with_tokenizer:
        build_tokenizer(tokenizer_spec).hf_tokenizer.save(str(path / "tokenizer.json"))
    return path


def test_hugging_face_teacher_from_a_local_path(tiny_teacher: Path, data_dir: Path,
                                                tmp_path: Path) -> None:
    spec = torch.load(tiny_teacher, weights_only=True)["platform"]["tokenizer"]
    hf_dir = _hf_teacher(tmp_path / "gpt2_tiny", spec, spec["vocab_size"])
    hf = ["model.teacher.kind=hf", "model.teacher.dtype=bfloat16", "trainer.max_steps=3",
          "test=false"]
    metrics, objects = train(kd_cfg(hf_dir, tmp_path / "run", data_dir, hf))
    assert objects["trainer"].global_step == 3 and metrics["train/loss_kd"] > 0
    teacher = objects["model"].teacher
    assert next(teacher.parameters()).dtype == torch.bfloat16
    assert all(not p.requires_grad for p in teacher.parameters())

    wrong = _hf_teacher(tmp_path / "gpt2_wide", spec, spec["vocab_size"] + 20)
    with pytest.raises(ValueError, match=f"predicts {spec['vocab_size'] + 20} token ids"):
        train(kd_cfg(wrong, tmp_path / "wrong", data_dir, hf))
    bare = _hf_teacher(tmp_path / "gpt2_bare", spec, spec["vocab_size"], with_tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        train(kd_cfg(bare, tmp_path / "bare", data_dir, hf))
