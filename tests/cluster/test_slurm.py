"""Real Slurm jobs on the local cluster: DDP via sbatch, an Optuna sweep and a study through the
Slurm launcher, preemption with requeue and exact resume, and the launcher's clear errors."""

from __future__ import annotations

import csv
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from tests.cluster.conftest import ENV, PY, REPO, TINY, final_metrics, run, wait_job

pytestmark = pytest.mark.cluster
SLURM = ["hydra/launcher=slurm"]


def _started_training(log: Path) -> float:
    """Epoch seconds of the 'Starting training' line of a run's train.log."""
    for line in log.read_text(encoding="utf-8").splitlines():
        if "Starting training" in line:
            stamp = re.match(r"\[([\d-]+ [\d:]+),(\d+)\]", line)
            assert stamp, line
            return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + \
                int(stamp.group(2)) / 1000
    raise AssertionError(f"no 'Starting training' in {log}")


def test_ddp_sbatch_matches_local_two_process_run(slurm, tmp_path):
    """scripts/sbatch_ddp.sh with 2 tasks = Lightning's local 2-process DDP, metric for metric."""
    args = [*TINY, "trainer.max_steps=10"]
    local = subprocess.Popen([PY, "-m", "experiments.train", "trainer=ddp", *args,
                              f"hydra.run.dir={tmp_path / 'local'}"], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    submitted = time.time()
    out = run(["sbatch", "--parsable", "--ntasks-per-node=2", f"--output={tmp_path}/%j.out",
               "scripts/sbatch_ddp.sh", *args, f"hydra.run.dir={tmp_path / 'slurm'}"])
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    wait_job(job)
    log = (tmp_path / f"{job}.out").read_text(encoding="utf-8")
    assert "Final metrics" in log, log[-3000:]
    local_out = local.communicate(timeout=400)[0]
    assert local.returncode == 0, local_out[-3000:]
    slurm_metrics = final_metrics(tmp_path / "slurm")
    assert slurm_metrics and slurm_metrics == final_metrics(tmp_path / "local")
    print(f"MEASURE ddp submission -> start of training: "
          f"{_started_training(tmp_path / 'slurm' / 'train.log') - submitted:.1f} s")


def test_optuna_sweep_through_slurm_launcher(slurm, tmp_path):
    """3 trials at once (sweeper n_jobs=3) as Slurm jobs; results in the one Optuna storage."""
    import optuna

    db = tmp_path / "optuna.db"
    out = run([PY, "-m", "experiments.train", "-m", "hparams_search=gpt_optuna", *SLURM, *TINY,
               "trainer.max_steps=10", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3",
               f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=cluster_test",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="cluster_test", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(0 < t.value < 10 for t in done)
    jobs = {p.name.split("_")[0] for p in (tmp_path / "sweep" / ".submitit").iterdir()}
    assert jobs, "no Slurm job folders"


def _read_csv_max_step(path: Path) -> int:
    with open(path, encoding="utf-8") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    return max(steps) if steps else -1


def test_preemption_requeues_and_resumes_exactly(slurm, tmp_path):
    """scancel --signal=USR1 (the whole job) mid-run: submitit requeues, the job resumes from
    last.ckpt in the same run directory and W&B run, and ends with the uninterrupted weights."""
    from lit_models.checkpoints import load_checkpoint

    every = 10
    # steps of ~0.3 s (not smoke_tiny's ~10 ms): on an idle machine the tiny job otherwise ends
    # before the signal can reach it mid-run
    heavier = ["model.arch_config.n_layer=4", "model.arch_config.n_embd=128", "data.block_size=64",
               "data.batch_size=16"]
    args = [*TINY, *heavier, "logger=many", "trainer.max_steps=80", "trainer.log_every_n_steps=1",
            f"callbacks.last_checkpoint.every_n_train_steps={every}"]
    ref = subprocess.Popen([PY, "-m", "experiments.train", *args,
                            f"hydra.run.dir={tmp_path / 'ref'}"], cwd=REPO, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = tmp_path / "sweep"
    multirun = subprocess.Popen([PY, "-m", "experiments.train", "-m", *SLURM, *args,
                                 f"hydra.sweep.dir={sweep}"], cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = sweep / "0"
    end = time.monotonic() + 300
    while not list(run_dir.glob("checkpoints/step000020-*.ckpt")):
        assert time.monotonic() < end and multirun.poll() is None, "no checkpoint at step 20"
        time.sleep(0.2)
    job = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
    signalled = time.time()
    assert run(["scancel", "--signal=USR1", job]).returncode == 0
    # the interrupted attempt is gone once Slurm holds the job again (requeued, pending)
    while "PENDING" not in run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout:
        assert time.monotonic() < end, "job never requeued"
        time.sleep(0.2)
    resumed_from = int(load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"])
    reached = _read_csv_max_step(run_dir / "csv" / "version_0" / "metrics.csv")
    out = multirun.communicate(timeout=400)[0]
    assert multirun.returncode == 0, out[-3000:]
    ref_out = ref.communicate(timeout=400)[0]
    assert ref.returncode == 0, ref_out[-3000:]

    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert f"continuing from {run_dir}/checkpoints/last.ckpt (step {resumed_from})" in log
    assert resumed_from >= 20 and reached - resumed_from <= every, (reached, resumed_from)
    resume_line = next(line for line in log.splitlines() if "continuing from" in line)
    resumed_at = datetime.strptime(resume_line[1:20], "%Y-%m-%d %H:%M:%S").timestamp()
    print(f"MEASURE preemption: signalled at step >= 20, trained to step {reached}, resumed at "
          f"step {resumed_from} ({reached - resumed_from} steps redone); signal -> resumed run "
          f"{resumed_at - signalled:.1f} s")
    runs = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(runs) >= 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1, runs
    got = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    want = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 80
    for key, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], tensor), key


def test_study_through_slurm_launcher_aggregates_as_locally(slurm, tmp_path):
    """2 variants as Slurm jobs: the same summary as the study's own sequential runs."""
    study = ["smoke_seeds", "seeds=[1]"]
    local = run([PY, "-m", "experiments.study", *study, f"output_dir={tmp_path / 'local'}",
                 "--", "logger=csv"])
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    slurm_run = run([PY, "-m", "experiments.study", *study, f"output_dir={tmp_path / 'slurm'}",
                     "--launcher", "slurm", "--", "logger=csv"])
    assert slurm_run.returncode == 0, slurm_run.stdout[-3000:] + slurm_run.stderr[-3000:]
    for variant in ("learned", "rope"):
        a = final_metrics(tmp_path / "local" / variant / "seed1")
        b = final_metrics(tmp_path / "slurm" / variant / "seed1")
        assert a and a == b, variant
        assert (tmp_path / "slurm" / variant / "seed1" / "result.json").is_file()

    def rows(path: Path) -> list[dict]:
        with open(path, encoding="utf-8") as fh:
            return [{k: v for k, v in r.items() if "tokens_per_sec" not in k}
                    for r in csv.DictReader(fh)]

    assert rows(tmp_path / "slurm" / "summary.csv") == rows(tmp_path / "local" / "summary.csv")


@pytest.mark.parametrize(("override", "names"), [
    ("hydra.launcher.partition=nope", "hydra.launcher.partition=nope: no such partition"),
    ("hydra.launcher.timeout_min=3", "hydra.launcher.timeout_min=3"),
])
def test_bad_launcher_settings_fail_before_submitting(slurm, tmp_path, override, names):
    out = run([PY, "-m", "experiments.train", "-m", *SLURM, *TINY, override,
               f"hydra.sweep.dir={tmp_path}"], timeout=120)
    assert out.returncode == 2 and names in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / ".submitit").exists()


def test_controller_down_is_one_clear_error(slurm, tmp_path):
    """A slurm.conf whose controller port nobody serves stands for a controller that is down."""
    conf = tmp_path / "slurm.conf"
    text = Path("/etc/slurm/slurm.conf").read_text(encoding="utf-8")
    conf.write_text(text + "\nSlurmctldPort=6999\nMessageTimeout=2\n", encoding="utf-8")
    out = run([PY, "-m", "experiments.train", "-m", *SLURM, *TINY, f"hydra.sweep.dir={tmp_path}"],
              env={**ENV, "SLURM_CONF": str(conf)}, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "hydra/launcher=slurm: the Slurm controller does not answer" in out.stderr
