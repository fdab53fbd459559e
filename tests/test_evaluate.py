"""scripts/evaluate.py: the run folder is positional (so torchrun can launch it), 2 processes agree with 1, and a
damaged model is one clear error."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "evaluate.py")


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the shared tiny run: evaluation writes metrics_<split>.json into the run folder."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def _env(cache_dir: Path) -> dict:
    return dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_ANIMALS_CACHE=str(cache_dir),
                HF_HUB_OFFLINE="1")


def _script_main():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_two_processes_under_torchrun_give_the_single_process_accuracy(run_copy, cache_dir):
    single = subprocess.run([sys.executable, SCRIPT, str(run_copy), "--split", "val"], env=_env(cache_dir),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((run_copy / "metrics_val.json").read_text())
    (run_copy / "metrics_val.json").unlink()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29541", SCRIPT, str(run_copy), "--split", "val"], env=_env(cache_dir),
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    both = json.loads((run_copy / "metrics_val.json").read_text())
    assert both["num_samples"] == one["num_samples"] == 40  # 4 per class: padding of the uneven shard dropped
    assert both["accuracy"] == one["accuracy"] and both["confusion_matrix"] == one["confusion_matrix"]
    assert f"val (mixed precision {one['mixed_precision']}): accuracy {one['accuracy']:.4f}" in single.stdout
    assert f"accuracy {one['accuracy']:.4f}" in two.stdout


def test_run_option_still_works_for_plain_python_and_needs_one_run(run_copy, cache_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_ANIMALS_CACHE", str(cache_dir))
    main = _script_main()
    assert main(["--run", str(run_copy), "--split", "val"]) == 0
    assert json.loads((run_copy / "metrics_val.json").read_text())["num_samples"] == 40
    for argv in ([], [str(run_copy), "--run", str(run_copy)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "give the run folder once" in capsys.readouterr().err


def test_a_corrupt_model_file_is_one_error_line(run_copy, cache_dir):
    weights = run_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = subprocess.run([sys.executable, SCRIPT, str(run_copy)], env=_env(cache_dir), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(weights.resolve()) in lines[0]
