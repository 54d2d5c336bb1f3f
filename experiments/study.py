"""Run a study: every variant x seed of one experiment, one training subprocess each, resumably.

    lhp study smoke_seeds                  # conf/study/smoke_seeds.yaml
    lhp study smoke_seeds seeds=[1,2,3] token_budget=100000
    lhp study smoke_seeds -- logger=csv    # extra train overrides for every run
    lhp study smoke_seeds --aggregate-only # only (re)write summary.md/.csv
    lhp study smoke_seeds --dry-run        # validate and print the commands
    lhp study --list

(``python -m experiments.study ...`` is the same.)

A study file (``conf/study/<name>.yaml``, or any ``path.yaml``) names a base ``experiment``,
``common`` overrides, a ``token_budget``, ``seeds`` and ``variants``; ``key=value`` arguments
override its keys (OmegaConf dotlist). These files are read here, not composed by Hydra.

Runs go to ``<output_dir>/<variant>/seed<s>`` (the train run's Hydra dir), seed by seed, so the
first round already has one run of every variant. A run is done when its ``result.json`` exists
(skipped on re-launch); an interrupted run is resumed from its ``checkpoints/last.ckpt``; a
failed one leaves ``failed.txt`` and is retried on re-launch. Exit status: 0 all runs done,
1 some run failed, 2 invalid study config, 130 interrupted.

By default the runs go one at a time, each a training subprocess. ``--jobs N`` dispatches them
through Hydra's ``submitit_local`` launcher, N at a time with ``cores // N`` threads each;
``--launcher slurm`` through the Slurm launcher (``conf/hydra/launcher/slurm.yaml``; its keys as
``hydra.launcher.<key>=...`` after ``--``). Each launched run writes its own ``result.json`` when it
finishes, so a study stopped at any point keeps every finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.progress import track

from analysis.compare import Column, build_table
from analysis.plots import default_panels, plot_against_flops, runs_without_x, write_plots
from analysis.runs import FLOPS_KEY as FLOPS_SERIES
from analysis.runs import (
    SEED_KEY,
    Group,
    differing_keys,
    load_run,
    load_series,
    lower_is_better,
)
from analysis.runs import Run as AnalysisRun
from datamodules.files import write_atomic
from experiments import CONFIG_DIR, REPO_ROOT, split_passthrough
from lhp.errors import UserError, entry_point

STUDY_DIR = Path(CONFIG_DIR) / "study"
EXPERIMENT_DIR = Path(CONFIG_DIR) / "experiment"
KEYS = ("name", "description", "experiment", "common", "token_budget", "budget", "seeds",
        "variants", "output_dir")
REQUIRED = ("experiment", "seeds", "variants")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
BUDGET_KEY = "callbacks.token_budget.max_tokens"
FLOPS_KEY = "callbacks.token_budget.max_flops"
# Set by the study for every run; an override of these in a study would be silently ambiguous.
RESERVED = ("seed", "experiment", "group", "tags", "run_name", "job_type", "ckpt_path", "resume",
            "hydra.run.dir")
# result.json keys shown after the metrics -> their format (flops: final train/flops, shown
# when some run logs it)
EXTRA_COLUMNS = {"params": ",.0f", "tokens_seen": ",.0f", "tokens_per_sec": ",.0f",
                 "flops": ".3g"}
LOG_TAIL_LINES = 60


class StudyError(UserError):
    """An invalid study config; the message names the file and the key."""


@dataclass
class Study:
    name: str
    description: str
    experiment: str
    common: list[str]
    token_budget: int | None
    seeds: list[int]
    variants: dict[str, list[str]]
    output_dir: Path
    file: Path
    extra: list[str] = field(default_factory=list)  # train overrides given after `--`
    flops_budget: float | None = None  # training FLOPs per run (the architecture's count)

    def runs(self) -> list[Run]:
        """Seed-major order: every variant of seed 1, then of seed 2, ..."""
        return [Run(v, s, self.output_dir / v / f"seed{s}")
                for s in self.seeds for v in self.variants]

    def overrides(self, variant: str, seed: int) -> list[str]:
        budget = [] if self.token_budget is None else [f"{BUDGET_KEY}={self.token_budget}"]
        if self.flops_budget is not None:
            budget.append(f"{FLOPS_KEY}={self.flops_budget:g}")
        return [f"experiment={self.experiment}", *self.common, *self.extra, *self.variants[variant],
                f"seed={seed}", *budget, f"group=study_{self.name}",
                f"tags=[study,{self.name},{variant}]", f"run_name={self.name}_{variant}",
                f"job_type={variant}"]

    def command(self, run: Run, ckpt: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "experiments.train", *self.overrides(run.variant, run.seed),
                *_resume(ckpt), f"hydra.run.dir={run.dir}"]

    def job_overrides(self, run: Run, ckpt: Path | None) -> list[str]:
        """The same run as :meth:`command`, as one job of a Hydra launcher (sweep dir = output_dir)."""
        return [*self.overrides(run.variant, run.seed), *_resume(ckpt),
                f"hydra.sweep.subdir={run.dir.relative_to(self.output_dir)}"]


def _resume(ckpt: Path | None) -> list[str]:
    # no usable last.ckpt: resume=auto still picks any good checkpoint the run directory
    # holds (the one selection function), else starts fresh
    return [f"ckpt_path={ckpt}"] if ckpt else ["resume=auto"]


@dataclass
class Run:
    variant: str
    seed: int
    dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant} seed={self.seed}"

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    @property
    def failed_path(self) -> Path:
        return self.dir / "failed.txt"

    @property
    def log_path(self) -> Path:
        return self.dir / "study_run.log"

    @property
    def last_ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    def result(self) -> dict[str, Any] | None:
        if not self.result_path.is_file():
            return None
        return json.loads(self.result_path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- config


def available_studies() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def find_study_file(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise StudyError(f"study file not found: {path}")
        return path
    path = STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise StudyError(f"unknown study {name!r}; available in {STUDY_DIR}: "
                         f"{', '.join(available_studies()) or '(none)'}")
    return path


def _check_overrides(where: str, value: Any, budget_keys: tuple[str, ...] = ()) -> list[str]:
    """A list of Hydra override strings that leave the keys the study controls alone."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise StudyError(f"{where}: must be a list of Hydra overrides (key=value), got {value!r}")
    reserved = (*RESERVED, *budget_keys)
    for item in value:
        if not isinstance(item, str) or not ("=" in item or item.startswith("~")):
            raise StudyError(f"{where}: {item!r} is not a Hydra override like "
                             "'model.arch_config.n_layer=4' (quote items containing ': ')")
        key = item.split("=", 1)[0].lstrip("+~")
        if key in reserved:
            hint = {"seed": "seeds", "experiment": "experiment", BUDGET_KEY: "budget.tokens",
                    FLOPS_KEY: "budget.flops", "hydra.run.dir": "output_dir"}.get(key, "name/variants")
            raise StudyError(f"{where}: {item!r} sets {key!r}, which the study sets for every "
                             f"run (use the study key {hint!r} instead)")
    return list(value)


def load_study(name: str, overrides: list[str] | tuple[str, ...] = (),
               extra: list[str] | tuple[str, ...] = ()) -> Study:
    """Load, override, resolve and validate a study file; errors name the file and the key."""
    file = find_study_file(name)
    try:
        cfg = OmegaConf.load(file)
    except (OmegaConfBaseException, ValueError, OSError, yaml.YAMLError) as err:
        raise StudyError(f"{file}: cannot read: {' '.join(str(err).split())}") from err
    if not isinstance(cfg, DictConfig):
        raise StudyError(f"{file}: must be a mapping of {', '.join(KEYS)}")
    unknown = [k for k in cfg if k not in KEYS]
    if unknown:
        raise StudyError(f"{file}: unknown key(s) {unknown}; allowed: {', '.join(KEYS)}")
    if cfg.get("name") is not None and cfg.name != file.stem:
        raise StudyError(f"{file}: key 'name': {cfg.name!r} must match the file name "
                         f"{file.stem!r} (it names the output dir and the W&B group)")
    for item in overrides:
        key = item.split("=", 1)[0].split(".", 1)[0]
        if "=" not in item or key not in KEYS:
            raise StudyError(f"{file}: override {item!r}: expected key=value with key one of "
                             f"{', '.join(KEYS)} (train overrides go after `--`)")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        raw = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise StudyError(f"{file}: {err}") from err

    for key in REQUIRED:
        if raw.get(key) is None:
            raise StudyError(f"{file}: missing required key {key!r}")
    study_name = raw.get("name") or file.stem
    if not isinstance(study_name, str) or not NAME_RE.match(study_name):
        raise StudyError(f"{file}: key 'name': {study_name!r} must match {NAME_RE.pattern}")
    experiment = raw["experiment"]
    if not isinstance(experiment, str) or not (EXPERIMENT_DIR / f"{experiment}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml")))
        raise StudyError(f"{file}: key 'experiment': no conf/experiment/{experiment}.yaml; "
                         f"available: {known}")
    budget, flops = _budget(file, raw)
    budget_keys = (*((BUDGET_KEY,) if budget is not None else ()),
                   *((FLOPS_KEY,) if flops is not None else ()))
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)):
        raise StudyError(f"{file}: key 'seeds': must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{file}: key 'seeds': duplicate seeds in {seeds}")
    variants = raw["variants"]
    if not isinstance(variants, dict) or not variants:
        raise StudyError(f"{file}: key 'variants': must be a non-empty mapping "
                         f"variant name -> list of overrides, got {variants!r}")
    checked: dict[str, list[str]] = {}
    for vname, vover in variants.items():
        if not isinstance(vname, str) or not NAME_RE.match(vname):
            raise StudyError(f"{file}: key 'variants': name {vname!r} must match "
                             f"{NAME_RE.pattern} (it becomes a directory, tag and run name)")
        checked[vname] = _check_overrides(f"{file}: key 'variants.{vname}'", vover,
                                          budget_keys)
    common = _check_overrides(f"{file}: key 'common'", raw.get("common"), budget_keys)
    extra = _check_overrides("train overrides after `--`", list(extra), budget_keys)
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise StudyError(f"{file}: key 'description': must be text, got {description!r}")
    out = raw.get("output_dir")
    if out is not None and not isinstance(out, str):
        raise StudyError(f"{file}: key 'output_dir': must be a path, got {out!r}")
    log_dir = Path(os.environ.get("PROJECT_ROOT", REPO_ROOT)) / "logs"  # = ${paths.log_dir}
    output_dir = Path(out).expanduser().resolve() if out else log_dir / "study" / study_name
    return Study(name=study_name, description=description.strip(), experiment=experiment,
                 common=common, token_budget=budget, seeds=list(seeds), variants=checked,
                 output_dir=output_dir, file=file, extra=extra, flops_budget=flops)


def _budget(file: Path, raw: dict[str, Any]) -> tuple[int | None, float | None]:
    """(tokens, FLOPs) per run from ``budget: {tokens, flops}`` (``token_budget`` is the older
    spelling of ``budget.tokens``); None: the experiment's own stopping."""
    spec = raw.get("budget") or {}
    if not isinstance(spec, dict) or set(spec) - {"tokens", "flops"}:
        raise StudyError(f"{file}: key 'budget': must be a mapping with 'tokens' and/or 'flops', "
                         f"got {spec!r}")
    tokens, flops = spec.get("tokens"), spec.get("flops")
    if tokens is not None and raw.get("token_budget") is not None:
        raise StudyError(f"{file}: keys 'token_budget' and 'budget.tokens' are the same budget: "
                         "set one")
    tokens = raw.get("token_budget") if tokens is None else tokens
    key = "token_budget" if raw.get("token_budget") is not None else "budget.tokens"
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens <= 0):
        raise StudyError(f"{file}: key '{key}': must be a positive int (tokens per run) "
                         f"or null (the experiment's own stopping), got {tokens!r}")
    if isinstance(flops, str):  # 2e13 in YAML 1.1 is a string; 2.0e+13 a float
        with contextlib.suppress(ValueError):
            flops = float(flops)
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, int | float)
                              or not flops > 0 or flops == float("inf")):
        raise StudyError(f"{file}: key 'budget.flops': must be a positive number (training FLOPs "
                         f"per run, e.g. 2.0e13) or null, got {flops!r}")
    return tokens, None if flops is None else float(flops)


def check_composes(study: Study) -> None:
    """Compose every variant's train config in-process (no training): typos fail before any run."""
    from hydra import compose, initialize_config_dir

    def attempt(where: str, overrides: list[str]) -> None:
        try:
            with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
                compose("train", overrides=overrides)
        except Exception as err:  # Hydra raises several exception types
            raise StudyError(f"{study.file}: {where}: the train config does not compose: "
                             f"{err}") from err

    base = [f"experiment={study.experiment}", *study.common, *study.extra]
    attempt("key 'common'" + (" / train overrides after `--`" if study.extra else ""), base)
    for variant in study.variants:
        attempt(f"key 'variants.{variant}'", study.overrides(variant, study.seeds[0]))


# --------------------------------------------------------------------------- results


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_run_metrics(run_dir: Path) -> dict[str, Any]:
    """Final metrics of a finished run from its CSV logs (all versions, i.e. across resumes),
    read by the same code as ``lhp compare`` (``analysis.runs.load_series``)."""
    series = load_series(run_dir, [])
    last = {k: float(v[-1]) for k, (_, v) in series.items()
            if k.startswith(("val/", "test/")) and len(v)}
    tokens = series.get("train/tokens_seen")
    flops = series.get(FLOPS_SERIES)
    throughput = series.get("throughput/train/device_tokens_per_sec")
    params = None
    for hparams in sorted(run_dir.glob("csv/version_*/hparams.yaml")):
        found = re.search(r"^model/params/total:\s*(\d+)\s*$", hparams.read_text(encoding="utf-8"), re.M)
        params = int(found.group(1)) if found else params
    return {"metrics": dict(sorted(last.items())), "params": params,
            "tokens_seen": int(tokens[1][-1]) if tokens is not None and len(tokens[1]) else None,
            "tokens_per_sec": float(throughput[1].mean())
            if throughput is not None and len(throughput[1]) else None,
            "flops": float(flops[1][-1]) if flops is not None and len(flops[1]) else None}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, lambda fh: fh.write((json.dumps(data, indent=2) + "\n").encode()))


def _tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- running


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the training run like Ctrl-C would (it saves nothing new, exits), then wait."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def _execute(cmd: list[str], log_path: Path) -> int:
    """Run one training subprocess, its output streamed (appended) to ``log_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HYDRA_FULL_ERROR", "1")  # full tracebacks in the log / failed.txt
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {shlex.join(cmd)}\n")
        log.flush()
        # Own session: Ctrl-C reaches only the study, which then stops the run exactly once.
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            log.write(f"\n=== interrupted by the study (exit {proc.returncode})\n")
            raise


def _headline(result: dict[str, Any]) -> str:
    metrics = result.get("metrics") or {}
    for key in ("val/loss", "test/loss"):
        if key in metrics:
            return f"{key} {metrics[key]:.4f}"
    return "no val/test metrics logged"


def _resumable(run: Run) -> tuple[Path | None, str]:
    """``(last.ckpt, 'step N, T tokens')`` of an interrupted run; moves an unreadable one aside."""
    if not run.last_ckpt.is_file():
        return None, ""
    from lit_models.checkpoints import load_checkpoint  # imports torch: only when resuming

    try:
        ckpt = load_checkpoint(run.last_ckpt)
    except ValueError as err:
        aside = run.last_ckpt.with_name("last.ckpt.unreadable")
        os.replace(run.last_ckpt, aside)
        return None, f" (starting over: {err}; moved it to {aside.name})"
    return run.last_ckpt, f"step {ckpt.get('global_step')}, {ckpt.get('tokens_seen')} tokens"


def _skip(study: Study, run: Run, tag: str) -> bool:
    """True (and says so) if the run is done already."""
    done = run.result()
    if done is None:
        return False
    note = ""
    if done.get("overrides") != study.overrides(run.variant, run.seed):
        note = " [WARNING: its overrides differ from the current study config; delete " \
               f"{run.result_path} to re-run it]"
    print(f"{tag} {run.label}: skipping, done ({_headline(done)}){note}", flush=True)
    return True


def _prepare(run: Run, tag: str, where: str) -> Path | None:
    """Make the run's directory ready to (re)start; returns the checkpoint it resumes from."""
    run.dir.mkdir(parents=True, exist_ok=True)
    ckpt, state = _resumable(run)
    if ckpt is None and (run.dir / "csv").exists():
        shutil.rmtree(run.dir / "csv")  # metrics of an attempt that left no checkpoint
    retry = " (retrying a failed run)" if run.failed_path.is_file() else ""
    action = f"resuming from {ckpt} ({state})" if ckpt else "running" + state
    print(f"{tag} {run.label}: {action}{retry}; {where}", flush=True)
    return ckpt


def _record(study: Study, run: Run, ckpt: Path | None, wall: float, cmd: list[str]) -> dict:
    """Write the finished run's ``result.json`` (atomically) and clear its ``failed.txt``."""
    result = {"study": study.name, "variant": run.variant, "seed": run.seed,
              "run_dir": str(run.dir), **read_run_metrics(run.dir), "wall_s": round(wall, 2),
              "resumed_from": str(ckpt) if ckpt else None,
              "finished_at": datetime.now().isoformat(timespec="seconds"),
              "overrides": study.overrides(run.variant, run.seed), "command": cmd,
              "command_str": shlex.join(cmd)}
    _write_json(run.result_path, result)
    run.failed_path.unlink(missing_ok=True)
    return result


def run_one(study: Study, run: Run, tag: str, started: float) -> str:
    """Run (or skip, or resume) one variant x seed; returns 'done', 'skipped' or 'failed'."""
    if _skip(study, run, tag):
        return "skipped"
    ckpt = _prepare(run, tag, f"log {run.log_path}")
    cmd = study.command(run, ckpt)
    offset = run.log_path.stat().st_size if run.log_path.is_file() else 0
    t0 = time.perf_counter()
    code = _execute(cmd, run.log_path)
    wall = time.perf_counter() - t0
    total = time.perf_counter() - started
    if code != 0:
        when = datetime.now().isoformat(timespec="seconds")
        report = (f"exit code {code} after {wall:.1f}s at {when}\n"
                  f"command: {shlex.join(cmd)}\nlog: {run.log_path}\n\n"
                  f"--- last {LOG_TAIL_LINES} lines of this attempt ---\n"
                  f"{_tail(run.log_path, offset)}\n")
        if ckpt:
            report += f"\n(it resumed from {ckpt}; delete {run.dir} to start this run over)\n"
        run.failed_path.write_text(report, encoding="utf-8")
        print(f"{tag} {run.label}: FAILED (exit {code}) after {wall:.1f}s; see {run.failed_path} "
              f"[study {total:.0f}s]", flush=True)
        return "failed"

    result = _record(study, run, ckpt, wall, cmd)
    if not result["metrics"]:
        print(f"{tag} {run.label}: WARNING: no val/test metrics in {run.dir}/csv "
              "(is the csv logger on?)", flush=True)
    print(f"{tag} {run.label}: done in {wall:.1f}s, {_headline(result)} [study {total:.0f}s]",
          flush=True)
    return "done"


def _budget_text(study: Study) -> str:
    parts = ([] if study.token_budget is None else [f"{study.token_budget:,} tokens per run"]) + \
        ([] if study.flops_budget is None else [f"{study.flops_budget:.3g} training FLOPs per run"])
    return " or ".join(parts) or "experiment's own stopping"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _begin(study: Study, how: str) -> list[Run]:
    runs = study.runs()
    print(f"study {study.name}: {len(runs)} runs ({len(study.variants)} variants x "
          f"{len(study.seeds)} seeds) of experiment={study.experiment}, budget: "
          f"{_budget_text(study)} -> {study.output_dir}{how}", flush=True)
    study.output_dir.mkdir(parents=True, exist_ok=True)
    snapshot = {k: getattr(study, k) for k in ("name", "description", "experiment", "common",
                                               "token_budget", "flops_budget", "seeds",
                                               "variants")}
    snapshot.update(output_dir=str(study.output_dir), file=str(study.file),
                    extra_train_overrides=study.extra)
    OmegaConf.save(OmegaConf.create(snapshot), study.output_dir / "study.yaml")
    return runs


def run_study(study: Study) -> int:
    runs = _begin(study, "")
    failed: list[Run] = []
    started = time.perf_counter()
    current = None
    try:
        for i, run in enumerate(track(runs, description=f"study {study.name}", transient=True,
                                      disable=not sys.stdout.isatty()), 1):
            current = run
            if run_one(study, run, f"[{i}/{len(runs)}]", started) == "failed":
                failed.append(run)
    except KeyboardInterrupt:
        print(f"\nstudy {study.name}: interrupted during {current.label if current else '-'}; "
              "re-launch the same command to resume (finished runs are skipped, "
              "interrupted ones continue from last.ckpt)", flush=True)
        aggregate(study, echo=False)
        return 130
    return _finish(study, runs, failed)


def _finish(study: Study, runs: list[Run], failed: list[Run]) -> int:
    table = aggregate(study, echo=False)
    if failed:
        print(f"\nstudy {study.name}: {len(failed)} of {len(runs)} runs FAILED: "
              + ", ".join(f"{r.label} ({r.failed_path})" for r in failed)
              + "\nre-launch the same command to retry them (finished runs are skipped)")
    print(f"\nsummary: {study.output_dir / 'summary.md'} and summary.csv\n\n{table}", flush=True)
    return 1 if failed else 0


@dataclass
class StudyTask:
    """One study run inside a launcher's job (a local process or a Slurm job): train in-process,
    then write the run's ``result.json`` there, so a finished run is kept whatever the study does."""

    study: Study
    resumed: dict[str, str | None]  # run dir -> the checkpoint it resumes from

    def __call__(self, cfg: DictConfig) -> dict[str, Any]:
        from experiments.launch import stop_if_preempted
        from experiments.train import train

        run = next(r for r in self.study.runs()
                   if r.variant == cfg.job_type and r.seed == cfg.seed)
        ckpt = self.resumed.get(str(run.dir))
        started = time.perf_counter()
        try:
            train(cfg)
        except Exception:
            stop_if_preempted()  # a requeued Slurm job: its next attempt records the run
            raise
        stop_if_preempted()
        wall = time.perf_counter() - started
        return _record(self.study, run, Path(ckpt) if ckpt else None, wall,
                       self.study.command(run, Path(ckpt) if ckpt else None))


def run_launched(study: Study, launcher: str, jobs: int, launcher_overrides: list[str]) -> int:
    """The study's runs through a Hydra launcher, ``jobs`` at a time (``experiments.launch``)."""
    from experiments.launch import launch

    runs = _begin(study, f" via hydra/launcher={launcher}, {jobs} at a time")
    pending: list[tuple[Run, Path | None]] = []
    for i, run in enumerate(runs, 1):
        if not _skip(study, run, f"[{i}/{len(runs)}]"):
            ckpt = _prepare(run, f"[{i}/{len(runs)}]", f"logs {study.output_dir}/.submitit/")
            pending.append((run, ckpt))
    failed: list[Run] = []
    if pending:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        base = [f"hydra.sweep.dir={study.output_dir}", *launcher_overrides]
        if launcher == "submitit_local":
            base.append(f"hydra.launcher.cpus_per_task={threads}")
        task = StudyTask(study, {str(r.dir): str(c) if c else None for r, c in pending})
        started = time.perf_counter()
        try:
            returns = launch(CONFIG_DIR, "train", launcher, base,
                             [study.job_overrides(r, c) for r, c in pending], task, jobs)
        except KeyboardInterrupt:
            print(f"\nstudy {study.name}: interrupted; finished runs are kept (result.json); "
                  "re-launch the same command to resume the others", flush=True)
            aggregate(study, echo=False)
            return 130
        for run, ret in zip((r for r, _ in pending), returns, strict=True):
            if run.result() is None:
                failed.append(run)
                error = getattr(ret, "_return_value", ret)
                run.failed_path.write_text(
                    f"failed at {datetime.now().isoformat(timespec='seconds')} through "
                    f"hydra/launcher={launcher}: {type(error).__name__}: {error}\n"
                    f"logs: {study.output_dir}/.submitit/ and {run.dir}/train.log\n",
                    encoding="utf-8")
                print(f"{run.label}: FAILED: {' '.join(str(error).split())[:300]}", flush=True)
            else:
                print(f"{run.label}: done, {_headline(run.result())} "
                      f"[study {time.perf_counter() - started:.0f}s]", flush=True)
    return _finish(study, runs, failed)


# --------------------------------------------------------------------------- aggregation


def _metric_order(keys: set[str]) -> list[str]:
    base = ("loss", "ppl", "word_ppl", "bpc")
    ordered: list[str] = []
    for split in ("val", "test"):
        mine = {k for k in keys if k.startswith(f"{split}/")}
        first = [f"{split}/{b}" for b in base if f"{split}/{b}" in mine]
        ordered += first + sorted(mine - set(first))
    return ordered


def aggregate(study: Study, echo: bool = True) -> str:
    """Write ``summary.md``, ``summary.csv`` (a row per variant) and the plots of ``lhp compare``
    (curves.png, headline.png, sweep_*.png, val_bpc_flops.png); returns the markdown table.
    Best val values and FLOPs come from the runs' CSV logs, so older result.json files get them."""
    by_variant: dict[str, list[AnalysisRun]] = {v: [] for v in study.variants}
    missing: list[str] = []
    notes: list[str] = []
    for run in study.runs():
        result = run.result()
        if result is None:
            state = "failed" if run.failed_path.is_file() else "not run yet"
            missing.append(f"{run.variant}/seed{run.seed} ({state})")
            continue
        values = {**(result.get("metrics") or {}),
                  **{k: result[k] for k in EXTRA_COLUMNS if result.get(k) is not None}}
        loaded = load_run(run.dir, f"{run.variant}/seed{run.seed}", notes, values)
        loaded.config.setdefault(SEED_KEY, result.get("seed", run.seed))
        if "flops" not in values and FLOPS_SERIES in loaded.series:  # an older result.json
            loaded.values["flops"] = loaded.final(FLOPS_SERIES)
        by_variant[run.variant].append(loaded)
    groups = [Group(variant, runs) for variant, runs in by_variant.items()]
    runs = [r for g in groups for r in g.runs]
    metrics = _metric_order({k for r in runs for k in r.values if k not in EXTRA_COLUMNS})
    columns: list[Column] = []
    for m in metrics:  # the last value; for a loss-like val metric also the run's best
        columns.append(Column(m, m, lambda r, m=m: r.values.get(m)))
        if m.startswith("val/") and lower_is_better(m) and any(m in r.series for r in runs):
            columns.append(Column(f"best {m}", f"{m}_best", lambda r, m=m: r.best(m)))
    columns += [Column(c.replace("tokens_per_sec", "tokens/s"), c,
                       lambda r, c=c: r.values.get(c), spec)
                for c, spec in EXTRA_COLUMNS.items()
                if c != "flops" or any("flops" in r.values for r in runs)]
    keys = [k for k in differing_keys(runs) if k != SEED_KEY]
    table = build_table(groups, columns, keys, grouped=True, sort=False,
                        label_header="variant", count_header="n_seeds")
    headline = "val/loss" if "val/loss" in metrics or not metrics else metrics[0]
    images = write_plots([g for g in groups if g.runs], study.output_dir, headline,
                         default_panels([headline]), stat="final", title=f"Study {study.name}")
    flops_image = plot_against_flops([g for g in groups if g.runs], "val/bpc", study.output_dir,
                                     title=f"Study {study.name}")
    if flops_image is not None:
        images.append(flops_image)
        without = [r.name for r in runs_without_x(runs, "flops")]
        if without:
            notes.append(f"{', '.join(without)}: no {FLOPS_SERIES} logged; left out of "
                         f"{flops_image.name}")
    budget = _budget_text(study)
    lines = [f"# Study `{study.name}`", "", study.description or "(no description)", "",
             f"- study file: `{study.file}`",
             f"- experiment: `{study.experiment}`; budget: {budget}; "
             f"seeds: {study.seeds}",
             f"- common overrides: `{' '.join(study.common + study.extra) or '(none)'}`",
             f"- written {datetime.now().isoformat(timespec='seconds')}; cells are mean ± "
             "sample std (ddof=1) over seeds, — where n=1"
             + ("; `best val/…` is a run's lowest logged value, `val/…` its last"
                if any(c.header.startswith("best ") for c in columns) else ""), "",
             table.markdown(), ""]
    if missing:
        lines += [f"Missing runs: {', '.join(missing)}", ""]
    lines += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    lines += [f"![{p.stem}]({p.name})" for p in images] + ([""] if images else [])
    lines += ["## Commands", "", "```"]
    for run in study.runs():
        result = run.result()
        lines.append(result["command_str"] if result else
                     "# not done: " + shlex.join(study.command(run)))
    lines += ["```", ""]
    study.output_dir.mkdir(parents=True, exist_ok=True)
    (study.output_dir / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    table.write_csv(study.output_dir / "summary.csv")
    if echo:
        print(f"summary: {study.output_dir / 'summary.md'} and summary.csv\n\n{table.markdown()}")
    return table.markdown()


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run every variant x seed of a study (conf/study/<name>.yaml), resumably, "
                    "and summarize mean ± std per variant.",
        epilog="Train overrides for every run go after `--`, e.g. "
               "`lhp study smoke_seeds -- logger=csv trainer=gpu`.")
    parser.add_argument("study", nargs="?", help="study name in conf/study/, or a path to a .yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override study keys, e.g. seeds=[1,2] token_budget=50000 "
                             "output_dir=/tmp/x variants.big=[model.arch_config.n_layer=8]")
    parser.add_argument("--aggregate-only", action="store_true",
                        help="only (re)write summary.md / summary.csv from finished runs")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the study and print each run's command; run nothing")
    parser.add_argument("--list", action="store_true", help="list the studies in conf/study/")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs at once (N>1 without --launcher: hydra/launcher=submitit_local, "
                             "cores//N threads each)")
    parser.add_argument("--launcher", choices=("submitit_local", "slurm"),
                        help="dispatch the runs through this Hydra launcher (conf/hydra/launcher/); "
                             "its keys go after `--` as hydra.launcher.<key>=value")
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv, extra = split_passthrough(argv)
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    launcher_overrides = [o for o in extra if o.startswith("hydra.launcher.")]
    extra = [o for o in extra if not o.startswith("hydra.launcher.")]
    if launcher_overrides and not args.launcher and args.jobs == 1:
        parser.error("hydra.launcher.* overrides need --launcher or --jobs N")
    if args.list:
        for name in available_studies():
            desc = OmegaConf.load(STUDY_DIR / f"{name}.yaml").get("description") or ""
            print(f"{name}: {desc.strip().splitlines()[0] if desc.strip() else ''}")
        return 0
    if not args.study:
        parser.error(f"name a study; available: {', '.join(available_studies())}")
    try:
        study = load_study(args.study, args.overrides, extra)
        if args.aggregate_only:
            if not study.output_dir.is_dir():
                print(f"error: nothing to aggregate: {study.output_dir} does not exist",
                      file=sys.stderr)
                return 1
            aggregate(study)
            return 0
        check_composes(study)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in study.runs():
            print(shlex.join(study.command(run, run.last_ckpt if run.last_ckpt.is_file()
                                           else None)))
        return 0
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        if args.launcher or args.jobs > 1:
            return run_launched(study, args.launcher or "submitit_local", args.jobs,
                                launcher_overrides)
        return run_study(study)
    finally:
        if in_main:
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
