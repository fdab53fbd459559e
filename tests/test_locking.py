"""One writer per folder, on real processes: concurrent train.py / study.py, SIGKILL, Ctrl-C, unwritable output."""
from __future__ import annotations

import errno
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_animals import checkpoints, evaluation, faults, hub, locking, runs, training
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "scripts" / "train.py")
STUDY = str(ROOT / "scripts" / "study.py")
TINY = ["--model", "animals_cnn5", "--train", "8", "--val", "4", "--test", "4", "--image-size", "32",
        "--batch-size", "16", "--no-progress"]


def train_args(sample_dir, cache_dir, out, epochs=1) -> list[str]:
    return [*TINY, "--data-dir", str(sample_dir), "--cache-dir", str(cache_dir), "--output-dir", str(out),
            "--epochs", str(epochs), "--mixed-precision", "no"]  # fp32: the comparison with a lone run is exact


def same_config(sample_dir, cache_dir, out, epochs=1, **kw) -> training.TrainConfig:
    """The TrainConfig that `train_args` gives scripts/train.py."""
    return training.TrainConfig(model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(out), epochs=epochs,
                                train_per_class=8, val_per_class=4, test_per_class=4, image_size=32, batch_size=16,
                                progress=False, cache_dir=str(cache_dir), **{"mixed_precision": "no", **kw})


def start(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_until(condition, procs, timeout=300.0):
    """Poll until `condition()` is true; fail early if one of `procs` has already exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"process exited early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lock_holder_pid(folder: Path) -> int | None:
    try:
        return json.loads((folder / locking.LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def race(cmd: list[str], folder: Path) -> tuple[subprocess.Popen, subprocess.Popen, tuple[str, str], tuple[str, str]]:
    """Start two identical writers at once; keep the one that got the lock stopped until the other has finished,
    so they surely overlap however fast the machine is. Returns (winner, loser, their outputs)."""
    procs = [start(cmd), start(cmd)]
    pids = {p.pid for p in procs}
    wait_until(lambda: lock_holder_pid(folder) in pids or all(p.poll() is not None for p in procs), [])
    assert lock_holder_pid(folder) in pids, [p.communicate()[1][-2000:] for p in procs]
    winner = next(p for p in procs if p.pid == lock_holder_pid(folder))
    loser = next(p for p in procs if p is not winner)
    winner.send_signal(signal.SIGSTOP)
    try:
        loser_out = loser.communicate(timeout=300)
    finally:
        winner.send_signal(signal.SIGCONT)
    return winner, loser, winner.communicate(timeout=600), loser_out


def assert_refused(proc, stderr: str, folder: Path, holder_pid: int) -> None:
    assert proc.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert str(folder) in errors[0] and f"process {holder_pid} " in errors[0]


# ----------------------------------------------------------------------------------------------------------------
# The lock itself (in one process: flock conflicts between two open files of the same process too)
# ----------------------------------------------------------------------------------------------------------------
def test_second_writer_is_refused_with_the_holder_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    with locking.hold_folder(run):
        (run / "history.csv").write_text("epoch\n1\n")
        with pytest.raises(UserError, match=f"{run} is in use by another run: process {os.getpid()} on "):
            with locking.hold_folder(run):
                pytest.fail("a second writer got the lock")
        assert (run / "history.csv").read_text() == "epoch\n1\n"
    with locking.hold_folder(run):  # released at the end of the block
        pass


def test_lock_file_is_not_content_and_survives_overwrite_cleanup(tmp_path):
    run = tmp_path / "run"
    with locking.hold_folder(run) as lock:
        assert lock.created and locking.folder_entries(run) == []
        (run / "checkpoint").mkdir()
        (run / "model.safetensors").write_bytes(b"x")
        locking.clear_folder(run)
        assert [p.name for p in run.iterdir()] == [locking.LOCK_NAME]
        with pytest.raises(UserError, match="in use"):  # still the same, held lock file
            with locking.hold_folder(run):
                pass


def test_a_failed_writer_removes_only_a_folder_it_created(tmp_path):
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    kept.mkdir()
    for folder in (fresh, kept):
        with pytest.raises(RuntimeError):
            with locking.hold_folder(folder, keep=lambda f: (f / "checkpoint").exists()):
                (folder / "splits.csv").write_text("x")
                raise RuntimeError("boom")
    assert not fresh.exists()
    assert (kept / "splits.csv").exists()


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / locking.LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))
    with locking.hold_folder(run) as lock:
        assert lock.created  # only a lock file was there: a failure may remove the folder again
        assert locking.holder(run)["pid"] == os.getpid()


def test_a_failed_checkpoint_save_keeps_the_last_good_one(tmp_path, monkeypatch):
    """Disk full half-way through epoch 2's save: epoch 1's checkpoint stays the one --resume uses, and the
    diagnosed error says why (the library's own error did not carry an errno)."""
    accelerator = evaluation.make_accelerator("no")
    accelerator.prepare(torch.nn.Linear(4, 2))  # registered: its weights are part of every checkpoint
    state = checkpoints.TrainerState()
    state.record({"epoch": 1, "val_acc": 0.5, "epoch_time_s": 1.0})
    first = checkpoints.save(accelerator, tmp_path, state, started=0.0)
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def save_then_fail(folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(accelerator, "save_state", save_then_fail)
    monkeypatch.setattr(faults, "_diagnose", lambda folder: errno.ENOSPC)  # what statvfs says on a full disk
    state.record({"epoch": 2, "val_acc": 0.6, "epoch_time_s": 1.0})
    with pytest.raises(OSError) as exc, faults.diagnosed_writes(tmp_path):
        checkpoints.save(accelerator, tmp_path, state, started=0.0)
    assert exc.value.errno == errno.ENOSPC
    assert checkpoints.latest(tmp_path) == first and checkpoints.saved_epoch(tmp_path) == 1
    assert [p.name for p in (tmp_path / runs.CHECKPOINT_DIR).iterdir()] == [first.name]  # no partial folder
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    monkeypatch.undo()  # a healthy disk: other errors pass through unchanged
    with pytest.raises(ValueError, match="a bug"), faults.diagnosed_writes(tmp_path):
        raise ValueError("a bug")


def test_continue_command_adds_resume_once_and_drops_overwrite():
    cmd = shlex.split(faults.continue_command(["--output-dir", "r x", "--overwrite"], "--resume"))
    assert cmd == [sys.executable, sys.argv[0], "--output-dir", "r x", "--resume"]
    assert shlex.split(faults.continue_command(["--resume"], "--resume"))[2:] == ["--resume"]


def test_upload_folder_never_contains_the_lock(tiny_run, tmp_path):
    assert (tiny_run / locking.LOCK_NAME).is_file()  # left by the run that wrote it, harmless
    folder = hub.write_upload_folder(tiny_run, tmp_path / "upload", "someone/tiny")
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------------------------
# Real processes
# ----------------------------------------------------------------------------------------------------------------
def test_two_train_scripts_on_one_folder_one_runs_the_other_is_refused(sample_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    winner, loser, (w_out, w_err), (_, l_err) = race([TRAIN, *train_args(sample_dir, cache_dir, out)], out)
    assert winner.returncode == 0, w_err[-3000:]
    assert_refused(loser, l_err, out, winner.pid)
    assert runs.is_complete(out)
    # The survivor is exactly the run it would have been alone.
    alone = tmp_path / "alone"
    training.train(same_config(sample_dir, cache_dir, alone))
    for name in ("metrics.json", "history.json"):
        ours, theirs = (json.loads((d / name).read_text()) for d in (out, alone))
        if name == "history.json":
            for a, b in zip(ours, theirs):
                assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
                assert a["val_acc"] == b["val_acc"]
        else:
            assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert json.loads((out / "run.json").read_text())["epochs_run"] == 1


def test_two_study_scripts_on_one_folder_one_runs_the_other_is_refused(sample_dir, cache_dir, tmp_path):
    out = tmp_path / "study"
    cmd = [STUDY, "--data-dir", str(sample_dir), "--output-dir", str(out), "--cache-dir", str(cache_dir),
           "--families", "scratch", "--sweep-lrs", "0.01", "--sweep-batch-sizes", "16", "--sweep-epochs", "1",
           "--epochs", "1", "--image-size", "32", "--train", "8", "--val", "4", "--test", "4", "--no-progress"]
    winner, loser, (w_out, w_err), (_, l_err) = race(cmd, out)
    assert winner.returncode == 0, w_err[-3000:]
    assert_refused(loser, l_err, out, winner.pid)
    assert "is in use by another study" in l_err
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == ["animals_cnn5__all", "animals_cnn5__sweep_lr0.01_bs16"]
    assert all(runs.is_complete(out / "runs" / name) for name in names)
    assert (out / "comparison.csv").is_file() and "animals_cnn5__all" in w_out


def started_then(signum, sample_dir, cache_dir, out, epochs=30):
    """A train.py run stopped by `signum` once its first checkpoint is on disk; returns (args, proc, stderr)."""
    args = train_args(sample_dir, cache_dir, out, epochs=epochs)
    proc = start([TRAIN, *args])
    wait_until(lambda: (out / "history.csv").exists(), [proc])
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return args, proc, err


@pytest.fixture(scope="module")
def interrupted_run(sample_dir, cache_dir, tmp_path_factory):
    """A 30-epoch run stopped with Ctrl-C (SIGINT) after its first epoch (shared; tests copy it to change it)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    args, proc, err = started_then(signal.SIGINT, sample_dir, cache_dir, out)
    return out, args, proc, err


def test_ctrl_c_says_which_epoch_was_kept_and_how_to_continue(interrupted_run):
    out, args, proc, err = interrupted_run
    assert proc.returncode == 130, err[-3000:]
    epoch = checkpoints.saved_epoch(out)
    assert epoch >= 1 and not runs.is_complete(out)
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted: {out} stopped after epoch {epoch} of 30; its checkpoint is kept in "
                           f"{checkpoints.latest(out)}; continue with: "), err[-3000:]
    assert shlex.split(line.split("continue with: ")[1]) == [sys.executable, TRAIN, *args, "--resume"]


def test_a_killed_run_never_blocks_its_resume(sample_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    _, proc, _ = started_then(signal.SIGKILL, sample_dir, cache_dir, out)
    assert proc.returncode == -signal.SIGKILL
    killed_pid = lock_holder_pid(out)
    assert killed_pid == proc.pid  # its lock file is still there ...
    epoch = checkpoints.saved_epoch(out)
    # ... and blocks nothing: the resume continues from the kept checkpoint (one more epoch here).
    cfg = same_config(sample_dir, cache_dir, out, epochs=30, resume=True, stop_after_epochs=1)
    assert training.train(cfg) == {}
    assert len(json.loads((out / "history.json").read_text())) == epoch + 1
    assert lock_holder_pid(out) == os.getpid()


def snapshot(run: Path) -> dict[str, bytes]:
    """The best model and every file of the checkpoint --resume would continue from (the newest complete one)."""
    files = [run / "model.safetensors", *(p for p in checkpoints.latest(run).rglob("*") if p.is_file())]
    return {str(f.relative_to(run)): f.read_bytes() for f in sorted(files)}


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def without_root_override():
    """Root (as in CI) writes through any mode bits; a child that drops the override capabilities from its bounding
    set keeps uid 0 (it can still run the venv's Python) but meets a read-only folder like any other user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def read_only_child():
    """preexec_fn for a child that cannot write to a folder with mode 0o555 (None when not root: nothing to do)."""
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["true"], preexec_fn=without_root_override, check=True)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("root here cannot drop its override capabilities (no CAP_SETPCAP)")
    return without_root_override


@pytest.mark.parametrize("target", ["resume", "new_run_inside"])
def test_read_only_output_is_one_error_line_and_keeps_the_checkpoint(target, interrupted_run, tmp_path):
    src, args, _, _ = interrupted_run
    run = Path(shutil.copytree(src, tmp_path / "run"))
    before = snapshot(run)
    out = run if target == "resume" else run / "new"
    args = [a if a != str(src) else str(out) for a in args] + (["--resume"] if target == "resume" else [])
    for path in [run, *run.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        proc = start([TRAIN, *args], preexec_fn=read_only_child())
        _, err = proc.communicate(timeout=300)
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0] == f"error: cannot write to {out} (Permission denied): nothing was changed"
    assert snapshot(run) == before and not (run / "new").exists()


def test_file_size_limit_mid_run_is_one_error_line_and_keeps_the_checkpoint(interrupted_run, tmp_path):
    src, args, _, _ = interrupted_run
    run = Path(shutil.copytree(src, tmp_path / "run"))
    before = snapshot(run)
    epoch = checkpoints.saved_epoch(run)
    limit = 64 * 1024  # the model (~4 MB) no longer fits; the lock's own small record does

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = [a if a != str(src) else str(run) for a in args] + ["--resume"]
    proc = start([TRAIN, *args], preexec_fn=limit_file_size)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith(f"error: cannot write to {run}") and "(File too large)" in errors[0]
    assert f"the last good checkpoint (epoch {epoch}) is kept in {checkpoints.latest(run)}" in errors[0]
    assert snapshot(run) == before
