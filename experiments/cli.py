"""One command for the platform: ``lhp <command> [args]``.

    lhp --help                      the commands, one line each
    lhp train experiment=smoke trainer.max_steps=10
    lhp <command> --help            the command's own help (Hydra's for the Hydra apps)
    lhp bench <name> [args]         a benchmark of experiments/bench/ (``lhp bench --help``)

``lhp <command> args`` runs ``python -m experiments.<module> args`` in this process (``runpy``,
as ``python -m`` does), so both forms behave the same, exit codes included. A new command is one
``register`` line below.
"""

from __future__ import annotations

import ast
import pkgutil
import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lhp.errors import UserError, entry_point

PROG = "lhp"
BENCH_PACKAGE = "experiments.bench"
BENCH_HELPERS = frozenset({"common"})  # modules of experiments/bench/ that are not benchmarks


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, and the module run as ``__main__`` or a handler."""

    help: str
    module: str | None = None
    handler: Callable[[list[str]], int] | None = None


COMMANDS: dict[str, Command] = {}


def register(name: str, module: str | None, help: str,
             handler: Callable[[list[str]], int] | None = None) -> None:
    """Make ``lhp <name> ...`` run ``python -m <module> ...`` (or ``handler(args)``)."""
    if name in COMMANDS or (module is None) == (handler is None):
        raise ValueError(f"command {name!r}: registered twice, or not exactly one of module/handler")
    COMMANDS[name] = Command(help, module, handler)


register("train", "experiments.train", "train a model (Hydra app: key=value overrides, -m for sweeps)")
register("evaluate", "experiments.evaluate", "evaluate a checkpoint on a datamodule (Hydra app)")
register("generate", "experiments.generate", "generate text from a checkpoint (Hydra app)")
register("serve", "experiments.serve", "serve a checkpoint: OpenAI-compatible HTTP API + chat page (Hydra app)")
register("export", "experiments.export", "export a checkpoint: safetensors, ONNX (parity-checked), ONNX int8 (Hydra app)")
register("study", "experiments.study", "run every variant x seed of a study, resumably, and summarize")
register("atlas", "experiments.atlas", "Fractal Atlas library: train-core, export, add-book, reconstruct, ...")
register("h2q", "experiments.h2q", "H2Q weight store: structure, load-layer, analyse, validate, ...")
register("tcs-stream", "experiments.tcs_stream", "stream a text file through TCS: Betti events (Hydra app)")
register("tcs-boundary", "experiments.tcs_boundary", "boundary study: do Betti events mark structure?")
register("tcs-id-profile", "experiments.tcs_id_profile", "intrinsic dimension across layers and training (ID anchor)")
register("compare", "experiments.compare", "compare runs offline: table (md/csv/html) and plots; --preset indra")


def _docline(path: Path) -> str:
    """First paragraph of a module's docstring as one line, read without importing it."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def benchmarks() -> dict[str, Path]:
    """Benchmark name -> file, from experiments/bench/."""
    import experiments.bench as package

    return {m.name: Path(package.__path__[0]) / f"{m.name}.py"
            for m in pkgutil.iter_modules(package.__path__)
            if not m.ispkg and m.name not in BENCH_HELPERS and not m.name.startswith("_")}


def _listing(title: str, rows: dict[str, str]) -> str:
    width = max(map(len, rows), default=0)
    return "\n".join([title, *(f"  {name:<{width}}  {text}" for name, text in rows.items())])


def usage() -> str:
    return "\n".join([
        f"usage: {PROG} <command> [args]   ({PROG} <command> --help for its options)", "",
        _listing("commands:", {name: c.help for name, c in COMMANDS.items()}), "",
        "Every command is also `python -m experiments.<module>`; Hydra apps take key=value overrides."])


def bench_usage() -> str:
    return "\n".join([f"usage: {PROG} bench <name> [args]   ({PROG} bench <name> --help for its options)",
                      "", _listing("benchmarks:", {n: _docline(p) for n, p in benchmarks().items()})])


def _run_module(module: str, prog: str, args: Sequence[str]) -> int:
    """Run ``module`` as ``__main__`` with ``args`` (as ``python -m`` would); its exit status."""
    argv = sys.argv
    sys.argv = [prog, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv = argv
    return 0


def _unknown(kind: str, name: str, known: Sequence[str], help_cmd: str) -> UserError:
    return UserError(f"unknown {kind} {name!r}; one of: {', '.join(known)} (see `{help_cmd}`)")


def bench(argv: Sequence[str]) -> int:
    """``lhp bench <name> [args]``: run ``experiments.bench.<name>``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(bench_usage())
        return 0 if argv else 2
    name, *args = argv
    known = benchmarks()
    if name not in known:
        raise _unknown("benchmark", name, sorted(known), f"{PROG} bench --help")
    return _run_module(f"{BENCH_PACKAGE}.{name}", f"{PROG} bench {name}", args)


register("bench", None, "run a benchmark: lhp bench <name> [args] (lhp bench --help)", handler=bench)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``lhp <command> [args]``; returns the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, *args = argv
    command = COMMANDS.get(name)
    if command is None:
        raise _unknown("command", name, list(COMMANDS), f"{PROG} --help")
    if command.handler is not None:
        return command.handler(args)
    return _run_module(command.module, f"{PROG} {name}", args)


if __name__ == "__main__":
    sys.exit(main())
