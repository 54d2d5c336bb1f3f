"""The kill test: SIGKILL training at seeded random moments, then ``resume=auto`` until done.

``kill_and_resume`` runs ``python -m experiments.train`` (a tiny config, ``last.ckpt`` every
``every`` steps, the CSV logger flushed every step so the step reached before a kill is known)
and kills it when its metrics reach a step drawn from a seeded RNG; one kill is aimed at the
moment a checkpoint is being written (its temporary file exists). After the kills a last
launch runs to the end. The figures: kills, steps redone per kill (last step logged before the
kill minus the step resumed from, which must be ≤ ``every``), checkpoint files that do not load
and verify (must be 0), and whether the final weights equal those of an uninterrupted run bit
for bit. ``kill_add_book`` does the same for ``atlas add-book``: the library must stay
consistent after every kill.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.002
LAUNCH_TIMEOUT_S = 240


@dataclass
class KillReport:
    kills: int = 0
    redone: list[int] = field(default_factory=list)
    during_write: int = 0
    corrupt: list[str] = field(default_factory=list)
    stale_temp_files: list[str] = field(default_factory=list)
    bitwise_equal: bool = False
    final_step: int = -1

    def line(self, label: str) -> str:
        worst = max(self.redone, default=0)
        return (f"kill test ({label}): {self.kills} kills ({self.during_write} during a checkpoint "
                f"write), steps redone per kill {self.redone} (max {worst}), corrupt checkpoint "
                f"files = {len(self.corrupt)}, stale temp files = {len(self.stale_temp_files)}, "
                f"final step {self.final_step}, final weights bitwise equal to an uninterrupted "
                f"run: {self.bitwise_equal}")


def train_cmd(root: Path, run_name: str, attempt: str, max_steps: int, every: int,
              extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "experiment=smoke_tiny", "logger=csv",
            "test=false", f"trainer.max_steps={max_steps}", "trainer.log_every_n_steps=1",
            "+logger.csv.flush_logs_every_n_steps=1", f"callbacks.last_checkpoint.every_n_train_steps={every}",
            f"run_name={run_name}", "resume=auto", f"paths.log_dir={root / 'logs'}",
            f"paths.data_dir={root / 'data'}", "extras.print_config=false",
            f"hydra.run.dir={root / 'logs' / 'train' / run_name / attempt}", *extra]


def logged_step(run_dir: Path) -> int:
    """The highest step in the run's metrics.csv (-1 before the first row)."""
    best = -1
    for path in run_dir.glob("csv/version_*/metrics.csv"):
        try:
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    if row.get("step", "").isdigit():
                        best = max(best, int(row["step"]))
        except (OSError, csv.Error):
            continue
    return best


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob(".*tmp*") if p.is_file()]


def _launch(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _wait_and_kill(proc: subprocess.Popen, run_dir: Path, target_step: int, at_write: bool) -> bool:
    """Kill ``proc`` once it logged ``target_step`` (or, ``at_write``, once a checkpoint temp file
    exists after that step). Returns whether it was killed (False: it finished first)."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    ckpt_dir = run_dir / "checkpoints"
    while proc.poll() is None and time.monotonic() < deadline:
        reached = logged_step(run_dir) >= target_step
        if reached and (not at_write or (ckpt_dir.is_dir() and _temp_files(ckpt_dir))):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(POLL_S if at_write and reached else 0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        raise TimeoutError(f"training did not reach step {target_step} in {LAUNCH_TIMEOUT_S} s")
    return False


def _final_state(path: Path) -> dict[str, torch.Tensor]:
    from lit_models.checkpoints import load_checkpoint

    return load_checkpoint(path)["state_dict"]


def kill_and_resume(root: Path, kills: int = 3, max_steps: int = 40, every: int = 5, seed: int = 0,
                    extra: list[str] | None = None) -> KillReport:
    """Kill a training run ``kills`` times at seeded random steps, resume until done, compare."""
    from lit_models.checkpoints import load_checkpoint

    extra = list(extra or [])
    env = {**os.environ, "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    rng = random.Random(seed)
    report = KillReport()
    ref = subprocess.run(train_cmd(root, "reference", "run", max_steps, every, extra), cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if ref.returncode != 0:
        raise RuntimeError(f"reference run failed: {ref.stderr[-2000:]}")
    resumed_from = 0
    for k in range(kills):
        run_dir = root / "logs" / "train" / "killed" / f"attempt{k}"
        proc = _launch(train_cmd(root, "killed", f"attempt{k}", max_steps, every, extra), env)
        at_write = k == kills - 1  # the last kill lands inside a checkpoint write: aim early,
        # so that several writes remain to catch however fast the machine is
        target = rng.randrange(resumed_from + 2, max_steps - 2) if not at_write else resumed_from + 1
        if not _wait_and_kill(proc, run_dir, target, at_write):
            break
        report.kills += 1
        report.during_write += at_write
        reached = logged_step(run_dir)
        # the next launch resumes from the newest good checkpoint; read which one
        from lit_models.checkpoints import select_resume_checkpoint

        found, ckpt, _ = select_resume_checkpoint(root / "logs" / "train" / "killed")
        resumed_from = int(ckpt.get("global_step", 0)) if found else 0
        report.redone.append(max(reached - resumed_from, 0))
    final = subprocess.run(train_cmd(root, "killed", "final", max_steps, every, extra), cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if final.returncode != 0:
        raise RuntimeError(f"final resumed run failed: {final.stderr[-2000:]}")
    killed_root = root / "logs" / "train" / "killed"
    for path in sorted(killed_root.rglob("*.ckpt")):
        try:
            load_checkpoint(path)
        except ValueError as err:
            report.corrupt.append(f"{path.relative_to(root)}: {err}")
    report.stale_temp_files = [str(p.relative_to(root)) for p in _temp_files(killed_root / "final")]
    final_ckpt = killed_root / "final" / "checkpoints" / "last.ckpt"
    report.final_step = int(load_checkpoint(final_ckpt)["global_step"])
    a, b = _final_state(final_ckpt), _final_state(root / "logs" / "train" / "reference" / "run" / "checkpoints" / "last.ckpt")
    report.bitwise_equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return report


def kill_add_book(root: Path, kills: int = 2, seed: int = 0) -> dict[str, Any]:
    """SIGKILL ``atlas add-book`` at seeded random moments; the library must stay consistent
    (``AtlasLibrary.verify`` finds nothing) after each kill and after a final complete run."""
    from lit_models.archs.fractal import FractalConfig, FractalDecoder
    from lit_models.atlas import AtlasLibrary

    rng = random.Random(seed)
    chars = [chr(c) for c in range(97, 123)] + [" ", ".", "\n"]
    torch.manual_seed(0)
    net = FractalDecoder(FractalConfig(vocab_size=len(chars) + 1, num_books=1, n_embd=16,
                                       block_hidden=32, depth=2, n_frequencies=6, key_dim=4))
    library = root / "library"
    AtlasLibrary.create(library, net, chars)
    book = root / "book.txt"
    book.write_text("the quick brown fox jumps over the lazy dog.\n" * 200, encoding="utf-8")
    def cmd(steps: int) -> list[str]:
        return [sys.executable, "-m", "experiments.atlas", "add-book", "--library", str(library),
                "--book", str(book), "--steps", str(steps), "--batch-size", "256"]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    problems: list[str] = []
    killed = 0
    for _ in range(kills):
        # far more steps than fit before the kill, so it lands at a seeded random moment of
        # start-up or key fitting whatever the machine's speed
        proc = subprocess.Popen(cmd(10**7), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(1.0, 8.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        problems += AtlasLibrary(library).verify()
    done = subprocess.run(cmd(200), cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if done.returncode != 0:
        problems.append(f"final add-book failed: {done.stderr[-500:]}")
    lib = AtlasLibrary(library)
    problems += lib.verify()
    return {"kills": killed, "problems": problems, "books": len(lib.books()),
            "temp_files": [str(p) for p in _temp_files(library)]}


def main() -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lhp-kill-") as tmp:
        torch_report = kill_and_resume(Path(tmp) / "torch", kills=4)
        sqlite_report = kill_and_resume(Path(tmp) / "sqlite", kills=2, extra=["+plugins=sqlite_checkpoint"])
        atlas = kill_add_book(Path(tmp) / "atlas")
    print(torch_report.line("torch.save checkpoints"))
    print(sqlite_report.line("SQLite checkpoint plugin"))
    print(f"kill test (atlas add-book): {atlas['kills']} kills, library problems = "
          f"{len(atlas['problems'])}, temp files = {len(atlas['temp_files'])}, books {atlas['books']}")
    ok = all(r.bitwise_equal and not r.corrupt and max(r.redone, default=0) <= 5
             for r in (torch_report, sqlite_report)) and not atlas["problems"]
    return 0 if ok else 1
