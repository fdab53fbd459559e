"""--mixed-precision auto: what the hardware does natively, explicit choices and launchers win, recorded per run."""
from __future__ import annotations

import json

import pytest
import torch

from hf_animals import precision


@pytest.fixture
def cpu_with(monkeypatch):
    def fake(*flags):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "avx2", *flags}))
    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    return fake


@pytest.mark.parametrize("flags, expected", [(("avx512_bf16",), "bf16"), (("amx_bf16", "amx_tile"), "bf16"),
                                             (("avx512f",), "no"), ((), "no")])
def test_auto_on_cpu_follows_native_bf16(cpu_with, flags, expected):
    cpu_with(*flags)
    assert precision.resolve_mixed_precision("auto", torch.device("cpu")) == expected
    assert precision.resolve_mixed_precision(None, "cpu") == expected  # old run.json args: None meant "not set"


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"),
                                                  ((7, 0), "fp16"), ((6, 1), "no")])
def test_auto_on_cuda_follows_the_card(monkeypatch, capability, expected):
    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    monkeypatch.setattr(precision, "cuda_capability", lambda device: capability)
    assert precision.resolve_mixed_precision("auto", torch.device("cuda", 0)) == expected


def test_explicit_values_pass_through_and_launcher_reduced_precision_wins_over_auto(cpu_with, monkeypatch):
    cpu_with()  # no native bf16: auto alone would say "no"
    for value in ("no", "fp16", "bf16"):
        assert precision.resolve_mixed_precision(value, "cpu") == value
    monkeypatch.setenv(precision.LAUNCHER_ENV, "bf16")
    assert precision.resolve_mixed_precision("auto", "cpu") == "bf16"
    assert precision.resolve_mixed_precision("no", "cpu") == "no"  # the command line beats the launcher
    cpu_with("avx512_bf16")
    monkeypatch.setenv(precision.LAUNCHER_ENV, "no")  # accelerate config's default answer is not a choice
    assert precision.resolve_mixed_precision("auto", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown mixed precision"):
        precision.resolve_mixed_precision("fp8", "cpu")


def test_real_cpu_flags_are_read():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux x86: the flags line of /proc/cpuinfo
        assert "fpu" in flags or "sse2" in flags


def test_inference_autocast_runs_in_the_resolved_dtype():
    layer = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with precision.inference_autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with precision.inference_autocast("cpu", "no"):
        assert layer(x).dtype == torch.float32


def test_runs_record_and_print_their_precision_also_when_it_changes_in_one_process(sample_dir, cache_dir, tmp_path,
                                                                                   capsys, monkeypatch):
    """fp32 then bf16 in one process, as the benchmark does (Accelerate's state is a process-wide singleton)."""
    from hf_animals import training

    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    for value in ("no", "bf16"):
        out = tmp_path / value
        summary = training.train(training.TrainConfig(
            model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(out), epochs=1, batch_size=16,
            image_size=32, train_per_class=4, val_per_class=2, test_per_class=2, progress=False,
            cache_dir=str(cache_dir), mixed_precision=value))
        assert summary["mixed_precision"] == value
        assert json.loads((out / "run.json").read_text())["mixed_precision"] == value
        assert f"mixed precision {value} (asked for)" in capsys.readouterr().out


def test_auto_run_records_what_it_resolved_to(sample_dir, cache_dir, tmp_path, monkeypatch):
    from hf_animals import training

    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    cfg = training.TrainConfig(model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(tmp_path / "run"),
                               epochs=1, batch_size=16, image_size=32, train_per_class=4, val_per_class=2,
                               test_per_class=2, progress=False, cache_dir=str(cache_dir))
    assert cfg.mixed_precision == "auto"
    summary = training.train(cfg)
    assert summary["mixed_precision"] == precision.hardware_precision("cpu") != "auto"
    assert summary["args"]["mixed_precision"] == "auto"  # the request stays in the arguments, for reproduction
