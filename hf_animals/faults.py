"""What a run says when it is stopped (Ctrl-C) or cannot write its output, and how its checkpoint survives both.

A student who presses Ctrl-C or fills the disk needs three facts, not a traceback: how far the run got, that the
last good checkpoint is still there, and the command that continues it. The checkpoint survives because it is
written beside the old one and swapped in whole (`staged_folder`); the messages are built here once and used by
`training.train` (which knows the run) and `cli.run_main` (which knows the command line).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
def explain_failures(out_dir: str | Path, state_file: str | Path, epochs: int) -> Iterator[None]:
    """Turn Ctrl-C into a RunInterrupted that says after which epoch the run stopped and what was kept, and an
    unwritable output (read-only, full, file-size limit) into one UserError naming the path."""
    out, state_file = Path(out_dir), Path(state_file)
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt as err:
        epoch = saved_epoch(state_file)
        stop = (f"stopped after epoch {epoch} of {epochs}; its checkpoint is kept in {state_file.parent}" if epoch
                else f"stopped before epoch 1 of {epochs} finished; no checkpoint yet")
        raise RunInterrupted(f"{out} {stop}") from err
    except UserError:
        raise
    except Exception as err:
        cause = write_failure(err)
        if cause is None or not _is_about(cause, out):
            raise
        path = cause.filename or out
        epoch = saved_epoch(state_file)
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {state_file.parent}; make room or fix the "
                f"permissions, then continue with --resume" if epoch else "no checkpoint was saved yet")
        raise UserError(f"cannot write to {path} ({cause.strerror}): {kept}") from err


def _is_about(cause: OSError, out: Path) -> bool:
    """Permission errors count only inside the output folder (a denied read of an image is not a write problem)."""
    if cause.errno not in (errno.EACCES, errno.EPERM) or not cause.filename:
        return True
    return Path(os.path.abspath(cause.filename)).is_relative_to(os.path.abspath(out))


def saved_epoch(state_file: str | Path) -> int:
    """The epoch of the checkpoint on disk (0: none)."""
    try:
        return int(json.loads(Path(state_file).read_text()).get("epoch", 0))
    except (OSError, ValueError, AttributeError):
        return 0


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


# ----------------------------------------------------------------------------------------------------------------
# A folder replaced whole
# ----------------------------------------------------------------------------------------------------------------
@contextmanager
def staged_folder(target: str | Path, accelerator=None) -> Iterator[Path]:
    """Yield a hidden sibling to write the new version of `target` into; swap it in only when complete.

    A write that fails (disk full, read-only, file-size limit, Ctrl-C) leaves the old `target` untouched. Under
    several processes every rank writes into the same staging folder and the main process swaps it in after all
    have finished. A failure that libraries report without an OS error (torch.save says "unexpected pos") is
    diagnosed from the file system, so the user still hears "no space" rather than a serialisation error.
    """
    target = Path(target)
    staging = target.with_name(f".{target.name}.partial")
    main = accelerator is None or accelerator.is_main_process
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # left by a process killed mid-save
    barrier()
    try:
        yield staging
        barrier()
        if main:
            _swap_in(staging, target)
        barrier()
    except Exception as err:
        reason = None if write_failure(err) else _diagnose(staging)
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        if reason is not None:
            raise OSError(reason, os.strerror(reason), str(target)) from err
        raise


def _diagnose(staging: Path) -> int | None:
    """The errno that most likely stopped writes into `staging`, judged from the file system; None if none fits."""
    sizes = [p.stat().st_size for p in staging.rglob("*") if p.is_file()] if staging.is_dir() else []
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and sizes and max(sizes) >= limit:
        return errno.EFBIG
    existing = staging if staging.exists() else staging.parent
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


def _swap_in(staging: Path, target: Path) -> None:
    """Atomically exchange `staging` with `target` (Linux renameat2), then drop the old version."""
    if not target.exists():
        os.rename(staging, target)
        return
    if not _exchange(staging, target):  # no renameat2: two renames, with a tiny window without a checkpoint
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(staging, target)
        staging = old
    shutil.rmtree(staging, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # file system or kernel without RENAME_EXCHANGE
    raise OSError(code, os.strerror(code), str(b))
