"""What the command modules share: escaped printing (:func:`say`), the operator's name
(:func:`who`), JSON without NaN (:func:`json_safe`), the log format of the long-running
commands (:func:`basic_logging`), and the type of ``register``'s argument."""

from __future__ import annotations

import argparse
import sys
from typing import IO, TYPE_CHECKING, Any

from harvest.ops.term import term_safe

if TYPE_CHECKING:
    #: What each command module's ``register`` adds its parsers to (``add_subparsers()``'s result).
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def say(*lines: object, multiline: bool = False, file: IO[str] | None = None) -> None:
    """Print each of ``lines`` through :func:`term_safe` (stdout unless ``file``)."""
    for line in lines:
        print(term_safe(line, multiline), file=file or sys.stdout)


def who() -> str:
    """The operator's name as recorded with a change: the login name, or ``uid:<n>`` when the
    process's user has no entry in the user database (a container)."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except Exception:  # no user database entry (a container): the numeric id
        return f"uid:{os.getuid()}"


def json_safe(x: Any) -> Any:
    """``x`` with every non-finite float as None (JSON has no NaN or Infinity)."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def basic_logging() -> None:
    """Log INFO and above to stderr with time, level and logger (the servers and loops)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
