"""One error boundary for every entry point.

``UserError`` marks what the user can fix (a bad file, key or value): the boundary prints its
message as one line on stderr and exits with code 2, without a traceback. Anything else is a bug
and keeps its traceback. ``LHP_TRACEBACK=1`` (or ``HYDRA_FULL_ERROR=1``) shows the traceback of
user errors too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

EXIT_USER_ERROR = 2
TRACEBACK_ENV = "LHP_TRACEBACK"

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """A problem the user can fix; the message says what, where (file:line, key) and what to do.

    Subclasses ``ValueError`` so existing ``except ValueError`` handlers keep working.
    """


class TrainingDiverged(UserError):
    """A loss or metric became NaN/inf: the run stopped; the message names the last good checkpoint."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: ours, plus config errors of Hydra/OmegaConf (the user's
    override or YAML), imported lazily so this module stays dependency-free."""
    types: list[type[BaseException]] = [UserError]
    try:
        from hydra.errors import (
            ConfigCompositionException,
            MissingConfigException,
            OverrideParseException,
        )
        from omegaconf.errors import OmegaConfBaseException

        types += [ConfigCompositionException, MissingConfigException, OverrideParseException,
                  OmegaConfBaseException]
    except ImportError:  # pragma: no cover - hydra is a core dependency
        pass
    return tuple(types)


def user_error_in(err: BaseException) -> BaseException | None:
    """``err`` or the first user error among its causes (Hydra's instantiate wraps what a
    constructor raises in an ``InstantiationException``)."""
    types = user_error_types()
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def show_tracebacks() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in (TRACEBACK_ENV, "HYDRA_FULL_ERROR"))


def _unparsable_override() -> str | None:
    """The command-line override Hydra's grammar rejects for an unquoted ``=`` or ``,`` in its
    value (run directories such as ``.../lr=5e-3,n_layer=4/seed1`` contain both)."""
    for arg in sys.argv[1:]:
        key, eq, value = arg.partition("=")
        if eq and value[:1] not in ("'", '"', "[", "{") and ("=" in value or "," in value):
            return arg
    return None


def one_line(err: BaseException) -> str:
    """``error: <message>`` with the causes' messages folded in, on one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    if type(err).__name__ == "OverrideParseException" and (arg := _unparsable_override()):
        key, _, value = arg.partition("=")
        return (f"error: cannot parse the override {arg!r}: a value containing '=' or ',' must be "
                f"quoted, e.g. {key}=\"'{value}'\" ({text})")
    cause = err.__cause__
    if cause is not None and not isinstance(err, UserError):
        text += f" ({' '.join(str(cause).split())})"
    return f"error: {text}"


@contextmanager
def boundary(traceback: bool | None = None) -> Iterator[None]:
    """Turn a user error into one line on stderr and exit code 2; bugs propagate unchanged."""
    traceback = show_tracebacks() if traceback is None else traceback
    try:
        yield
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None or traceback:
            raise
        print(one_line(user_error), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


def entry_point(fn: F) -> F:
    """Decorator form of :func:`boundary` for ``main`` functions (argparse and Hydra alike).

    Hydra prints config errors itself under a shortened traceback and exits 1; with
    ``HYDRA_FULL_ERROR`` set it re-raises instead, so it is set here (for this process only) and
    the boundary decides what the user sees.
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user_asked = show_tracebacks()
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            with boundary(traceback=user_asked):
                return fn(*args, **kwargs)
        finally:
            if not user_asked:
                os.environ.pop("HYDRA_FULL_ERROR", None)

    return wrapped  # type: ignore[return-value]
