"""Shared glue for the thin scripts in `scripts/`: argparse validators and the exit-code convention."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

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


def show_library_messages() -> None:
    """Print the library's own INFO messages (skipped files, duplicates found) plainly, without other libraries'."""
    logger = logging.getLogger("hf_animals")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a script's `main`; a `UserError` becomes one `error: ...` line and exit code 2."""
    show_library_messages()
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
