"""What a run says when it is stopped (Ctrl-C) or cannot write its output, and how its checkpoint survives both.

A student who presses Ctrl-C or fills the disk needs three facts, not a traceback: how far the run got, that the
last good checkpoint is still there, and the command that continues it. The checkpoint survives because every epoch
is saved into a folder of its own and only a complete one counts (`checkpoints`); the messages are built here once
and used by `training.train` (which knows the run) and `cli.run_main` (which knows the command line).
"""
from __future__ import annotations

import errno
import os
import re
import resource
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import checkpoints
from .errors import UserError

# Errors that mean "the output cannot be written" (read-only, no space, quota, file-size limit, permissions).
WRITE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM})


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying where it stopped; still a KeyboardInterrupt for every caller."""


def write_failure(err: BaseException) -> OSError | None:
    """The OS error behind an exception (itself, its causes, or a library's "(os error N)" text) if it is a write
    failure; None otherwise. safetensors wraps OS errors in its own type, so the text is looked at too."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return seen
        match = re.search(r"\(os error (\d+)\)", str(seen))
        if match and int(match.group(1)) in WRITE_ERRNOS:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def explain_failures(out_dir: str | Path, epochs: int) -> Iterator[None]:
    """Turn Ctrl-C into a RunInterrupted that says after which epoch the run stopped and which checkpoint was kept,
    and an unwritable output (read-only, full, file-size limit) into one UserError naming the path."""
    out = Path(out_dir)
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt as err:
        epoch, folder = checkpoints.saved_epoch(out), checkpoints.latest(out)
        stop = (f"stopped after epoch {epoch} of {epochs}; its checkpoint is kept in {folder}" if folder
                else f"stopped before epoch 1 of {epochs} finished; no checkpoint yet")
        raise RunInterrupted(f"{out} {stop}") from err
    except UserError:
        raise
    except Exception as err:
        cause = write_failure(err)
        if cause is None or not _is_about(cause, out):
            raise
        path = cause.filename or out
        epoch, folder = checkpoints.saved_epoch(out), checkpoints.latest(out)
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {folder}; make room or fix the "
                f"permissions, then continue with --resume" if folder else "no checkpoint was saved yet")
        raise UserError(f"cannot write to {path} ({cause.strerror}): {kept}") from err


def _is_about(cause: OSError, out: Path) -> bool:
    """Permission errors count only inside the output folder (a denied read of an image is not a write problem)."""
    if cause.errno not in (errno.EACCES, errno.EPERM) or not cause.filename:
        return True
    return Path(os.path.abspath(cause.filename)).is_relative_to(os.path.abspath(out))


def continue_command(args: list[str], resume_flag: str | None) -> str:
    """The command line that continues this one: the same script and arguments, plus `resume_flag` if given
    (and without --overwrite, which would throw the kept checkpoint away)."""
    args = [a for a in args if a != "--overwrite"]
    if resume_flag and resume_flag not in args:
        args.append(resume_flag)
    command = shlex.join([sys.executable, sys.argv[0], *args])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"the same launcher (torchrun / accelerate launch) with {command}"
    return command


def interrupted_message(err: KeyboardInterrupt, args: list[str], resume_flag: str | None) -> str:
    """What a script prints for Ctrl-C: where the run stopped (when known) and how to continue it."""
    if not isinstance(err, RunInterrupted):
        return "interrupted"
    return f"interrupted: {err}; continue with: {continue_command(args, resume_flag)}"


@contextmanager
def diagnosed_writes(folder: str | Path) -> Iterator[None]:
    """Writes into `folder` whose failure a library reports without an OS error (torch.save says "unexpected pos",
    "file write failed") are re-raised as the OSError the file system explains, so `explain_failures` can still say
    "no space" or "file too large" rather than show a serialisation error; other failures pass through unchanged."""
    try:
        yield
    except Exception as err:
        reason = None if write_failure(err) else _diagnose(Path(folder))
        if reason is None:
            raise
        raise OSError(reason, os.strerror(reason), str(folder)) from err


def _diagnose(folder: Path) -> int | None:
    """The errno that most likely stopped writes into `folder`, judged from the file system; None if none fits."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and sizes and max(sizes) >= limit:
        return errno.EFBIG
    existing = folder if folder.exists() else folder.parent
    try:
        stats = os.statvfs(existing)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(existing, os.W_OK):
        return errno.EACCES
    if stats.f_bavail * stats.f_frsize < 2**20:
        return errno.ENOSPC
    return None
