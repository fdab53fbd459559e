"""Shared glue for the thin scripts in `scripts/`: argparse validators and the exit-code convention."""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Callable

from . import faults
from .errors import UserError


def positive_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def optional_float(text: str) -> float | None:
    """A number, or 'none' for "leave it as the library decides" (e.g. --head-init-scale none)."""
    return None if text.strip().lower() == "none" else _parse(text, float, "a number or 'none'")


def fraction(text: str) -> float:
    value = _parse(text, float, "a number")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _parse(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def add_tracking_arguments(parser: argparse.ArgumentParser, project_default: str | None = None) -> None:
    """--report-to / --tracker-project, shared by train.py and study.py (names as in the HF examples)."""
    from .tracking import DEFAULT_PROJECT, REPORT_TO_CHOICES, TB_DIR

    g = parser.add_argument_group("experiment tracking")
    # No argparse `choices`: a wrong name is one `error:` line from the library (exit 2), like every input problem.
    # SUPPRESS: left out of the namespace unless given, so the config's own default (None) applies.
    g.add_argument("--report-to", default=argparse.SUPPRESS, metavar="{" + ",".join(REPORT_TO_CHOICES) + "}",
                   help=f"trackers, or a comma list (default: tensorboard, event files in RUN/{TB_DIR}/, when "
                        "installed, else none)")
    g.add_argument("--tracker-project", default=argparse.SUPPRESS,
                   help=f"the trackers' project (default: {project_default or DEFAULT_PROJECT})")


def show_library_messages() -> None:
    """Print the library's own INFO messages (skipped files, duplicates found) plainly, without other libraries'."""
    logger = logging.getLogger("hf_animals")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, *,
             resume_flag: str | None = "--resume") -> int:
    """Run a script's `main`; a `UserError` or an unwritable output becomes one `error: ...` line and exit code 2.

    Ctrl-C (exit 130) says where a run stopped and the command that continues it: these arguments plus
    `resume_flag` (None for scripts such as study.py that continue by running the same command again).
    """
    show_library_messages()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(faults.interrupted_message(err, args, resume_flag), file=sys.stderr)
        return 130
    except OSError as err:
        if faults.write_failure(err) is not err:
            raise
        verb = "access" if err.errno in (errno.EACCES, errno.EPERM) else "write to"  # a denied read too
        print(f"error: cannot {verb} {err.filename or 'the output'} ({err.strerror})", file=sys.stderr)
        return 2
    return int(code or 0)
