"""Run the fuzz corpus in-process and classify every case.

Outcomes: ``clear`` (a ``UserError`` or a Hydra/OmegaConf config error: what the error boundary
prints as one line with exit code 2), ``accepted`` (the reader took it; allowed only for cases
marked ``may_accept``, e.g. a flipped byte inside text), ``traceback`` (any other exception: a
bug), ``hang`` (over the per-case time limit), ``executed`` (a hostile input ran code), and
``partial`` (a temporary or half-written file was left behind).
"""

from __future__ import annotations

import logging
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lhp.errors import user_error_types
from tests.reliability.corpus import MARKER, Case, Seeds, build_cases, make_seeds

CASE_TIMEOUT_S = 20
PARTIAL_PATTERNS = ("*.tmp*", "*-journal", "*.partial", ".*.tmp*")


class Hang(Exception):
    """Raised by the alarm when a case runs past its time limit."""


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    seconds: float


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _partials(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for pattern in PARTIAL_PATTERNS
                  for p in directory.rglob(pattern))


def run_case(case: Case, workdir: Path) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    user_errors = user_error_types()
    try:
        with time_limit(CASE_TIMEOUT_S):
            target = case.make(workdir)
            before = set(_partials(workdir))
            case.read(target, workdir)
        outcome, detail = ("accepted" if case.may_accept else "accepted-malformed"), ""
    except Hang as err:
        outcome, detail, before = "hang", str(err), set()
    except SystemExit as err:  # an entry point's boundary: exit code 2 is a clear error
        outcome = "clear" if err.code == 2 else "traceback"
        detail, before = f"exit {err.code}", set()
    except user_errors as err:
        outcome, detail, before = "clear", " ".join(str(err).split())[:300], set()
    except Exception as err:  # noqa: BLE001 - every other exception is what we are looking for
        outcome, detail, before = "traceback", f"{type(err).__name__}: {err}"[:300], set()
    if (workdir / MARKER).exists():
        outcome, detail = "executed", f"{MARKER} was created"
    left = sorted(set(_partials(workdir)) - before)
    if outcome in ("clear", "accepted") and left:
        outcome, detail = "partial", f"left {left[:3]}"
    return Result(case, outcome, detail, time.perf_counter() - start)


def run_cases(root: Path, seeds: Seeds | None = None) -> list[Result]:
    """Write the seeds (unless given) and run every case in its own directory under ``root``."""
    seeds = seeds or make_seeds(root / "seeds")
    logging.disable(logging.WARNING)  # expected warnings from thousands of bad files
    try:
        return [run_case(case, root / "cases" / f"{i:03d}") for i, case in enumerate(build_cases(seeds))]
    finally:
        logging.disable(logging.NOTSET)


BAD = ("traceback", "hang", "executed", "partial", "accepted-malformed")


def summary(results: list[Result]) -> str:
    counts = Counter(r.outcome for r in results)
    formats = Counter(r.case.fmt for r in results)
    lines = [f"{r.outcome:<18} {r.case.name}: {r.detail}" for r in results if r.outcome in BAD]
    lines.append(f"formats: {dict(sorted(formats.items()))}")
    lines.append(f"fuzz corpus: {len(results)} cases, {counts['clear']} clear errors, "
                 f"{counts['accepted']} accepted (still valid after mutation), "
                 f"tracebacks = {counts['traceback']}, hangs = {counts['hang']}, "
                 f"executed = {counts['executed']}, partial files = {counts['partial']}, "
                 f"malformed accepted = {counts['accepted-malformed']}, "
                 f"{sum(r.seconds for r in results):.1f} s")
    return "\n".join(lines)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lhp-fuzz-") as tmp:
        results = run_cases(Path(tmp))
    print(summary(results))
    return 1 if any(r.outcome in BAD for r in results) else 0
