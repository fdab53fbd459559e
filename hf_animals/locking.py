"""One writer per run folder and per study folder: a lock the kernel drops when its process ends.

Students re-run notebook cells and start a second study while the first is still going; two writers on one folder
used to delete each other's files and leave a mixture of two runs. Every writer (`train.py` with or without
`--resume` / `--overwrite`, `study.py`) therefore holds an exclusive `flock` on `<folder>/.hf_animals.lock` for as
long as it writes. Why `flock` on a file rather than a marker file: the kernel releases it when the process exits
however it exits (SIGKILL, OOM, power loss of a container), so a killed run never blocks the next `--resume`; the
file itself only tells the next writer who holds it (pid, host, start time, command). Readers (evaluate, report,
predict, push_to_hub, the app) never lock: a finished run's files are only ever replaced atomically.

The lock file is hidden and never counts as content: `folder_entries` is what "is this folder empty?" checks use,
and `clear_folder` is what `--overwrite` uses, so a fresh folder stays "empty" and the lock survives a cleanup.
Under several processes (`torchrun`, `accelerate launch`) only rank 0 takes the lock and every rank gets the same
outcome through `broadcast_object_list`, so all ranks fail with the same message or all go on.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

LOCK_NAME = ".hf_animals.lock"


@dataclass
class FolderLock:
    """A held lock (fd set, on the one process that holds it) or this rank's share of one (fd None)."""

    folder: Path
    fd: int | None
    created: bool  # this writer made the folder (or found only a lock left by a killed writer): it may remove it


def folder_entries(folder: str | Path) -> list[Path]:
    """What a folder holds apart from its lock file ([] when it does not exist): its content for emptiness checks."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name != LOCK_NAME]


def clear_folder(folder: str | Path) -> None:
    """Remove everything in a folder except its lock file (`--overwrite` under the lock: the lock stays valid)."""
    for entry in folder_entries(folder):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def holder(folder: str | Path) -> dict:
    """Who wrote the lock file last (pid, host, started, command); {} when there is none. Informational only."""
    path = Path(folder) / LOCK_NAME
    for _ in range(20):  # the holder writes its details right after locking: give it a moment
        try:
            info = json.loads(path.read_text())
            if isinstance(info, dict) and "pid" in info:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


@contextmanager
def hold_folder(folder: str | Path, *, keep: Callable[[Path], bool] | None = None,
                what: str = "run") -> Iterator[FolderLock]:
    """Hold `folder`'s lock (creating the folder) for the body; a second writer gets a UserError and changes nothing.

    If the body fails and this writer created the folder, the folder is removed unless `keep(folder)` says it holds
    something worth keeping (default: anything besides the lock) - removed while still locked, so no other writer
    can be half-way into it. Under several processes every rank must enter together (rank 0 locks, all learn).
    """
    if folder in ("", None):
        raise UserError("--output-dir is required")
    lock = _lock_on_every_rank(Path(folder), what)
    try:
        yield lock
    except BaseException:
        if lock.fd is not None and lock.created and not (keep or folder_entries)(lock.folder):
            _remove_locked_folder(lock)
        raise
    finally:
        if lock.fd is not None:
            os.close(lock.fd)  # releases the flock


def _lock_on_every_rank(folder: Path, what: str) -> FolderLock:
    state = _distributed_state()
    if state is None:
        return _acquire(folder, what)
    from accelerate.utils import broadcast_object_list

    lock, failure, outcome = None, None, [None]
    if state.is_main_process:
        try:
            lock = _acquire(folder, what)
        except Exception as err:  # every rank must reach the broadcast, whatever happened here
            failure, outcome = err, [str(err) if isinstance(err, UserError) else f"rank 0 could not lock {folder}: {err}"]
    broadcast_object_list(outcome, from_process=0)
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        raise UserError(outcome[0])
    return lock or FolderLock(folder, None, False)


def _distributed_state():
    """Accelerate's process state when this is one of several processes (torchrun / accelerate launch), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # the same state Accelerator() reuses later
    return state if state.num_processes > 1 else None


def _acquire(folder: Path, what: str) -> FolderLock:
    """Create the folder, lock its lock file without waiting, record who holds it."""
    path = folder / LOCK_NAME
    for _ in range(100):
        try:
            created = _make_folder(folder)
            leftover = path.exists() and not folder_entries(folder)  # only a lock left by a killed writer
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # a failed writer removed the folder under us: make it again
        except OSError as err:
            raise UserError(f"cannot write to {folder} ({err.strerror}): nothing was changed") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(_busy_message(folder, what)) from None
        if _is_current(fd, path):  # not a lock file that its holder unlinked while we opened it
            _record_holder(fd)
            return FolderLock(folder, fd, created or leftover)
        os.close(fd)
    raise UserError(f"could not lock {folder}: another process keeps removing it")


def _make_folder(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True)
        return True
    except FileExistsError:
        if not folder.is_dir():
            raise UserError(f"{folder} exists and is not a folder") from None
        return False


def _is_current(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _record_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _busy_message(folder: Path, what: str) -> str:
    info = holder(folder)
    who = (f"process {info.get('pid')} on {info.get('host')}, started {info.get('started')} ({info.get('command')})"
           if info else "another process (details not written yet)")
    return (f"{folder} is in use by another {what}: {who}; wait for it to finish or stop it, then try again "
            f"(nothing was changed)")


def _remove_locked_folder(lock: FolderLock) -> None:
    """Remove a folder this writer created, lock file last, while still holding the lock."""
    with suppress(OSError):
        clear_folder(lock.folder)
    with suppress(OSError):
        (lock.folder / LOCK_NAME).unlink()
    with suppress(OSError):
        lock.folder.rmdir()  # fails harmlessly if a new writer already made a fresh lock file here
