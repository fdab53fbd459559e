"""Which floating-point precision a run uses: `--mixed-precision auto` picks what the hardware does natively.

Why a default other than fp32: on a CPU with native bf16 (AVX-512 BF16 or AMX) or a GPU with bf16 tensor cores, a
training step is compute-bound and bf16 autocast with channels_last roughly doubles or triples images/s (issue 13:
ResNet-18 224 px on a 2-core EPYC, 12.9 -> 34.5 img/s) at equal accuracy. On a CPU without it, bf16 is emulated and
slower than fp32, so `auto` keeps fp32 there; on a GPU without bf16 (before Ampere) fp16 with loss scaling (which
Accelerate's GradScaler does) is the fast path (Volta/Turing; older cards stay fp32).

Who decides, in order:
1. an explicit `--mixed-precision no|fp16|bf16` (the user asked for it);
2. with `auto`, a launcher's `ACCELERATE_MIXED_PRECISION` that names a reduced precision (`accelerate launch
   --mixed_precision bf16`, or a config file saying fp16/bf16): the user chose it for this launch. A launcher's
   `no` is NOT taken as a choice: it is `accelerate config`'s default answer and cannot be told apart from a key
   pressed through, so `auto` still applies; pass `--mixed-precision no` to force fp32;
3. the hardware: bf16 where native, else fp16 on a CUDA GPU, else `no`.
The resolved value (never `auto`) is what Accelerate gets, what the run prints and what run.json records.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch

CHOICES = ("auto", "no", "fp16", "bf16")  # the CLI's --mixed-precision choices
EXPLICIT = ("no", "fp16", "bf16")  # what Accelerate understands, and what is recorded
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic on x86
LAUNCHER_ENV = "ACCELERATE_MIXED_PRECISION"


def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this machine's CPU (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    return _read_cpu_flags()


@lru_cache(maxsize=1)
def _read_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when bf16 matmuls/convolutions run on bf16 hardware instructions (not emulated through fp32).

    /proc/cpuinfo is the authority; torch's dispatch capability ('AVX512', 'AMX'...) is not enough on its own, since
    plain AVX-512 CPUs (Skylake-X) report 'AVX512' without bf16 instructions.
    """
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (a function of its own so tests can fake a GPU)."""
    return torch.cuda.get_device_capability(device)


def hardware_precision(device: torch.device | str) -> str:
    """The fastest precision the device runs natively: 'bf16', 'fp16' or 'no'.

    CUDA: bf16 from Ampere (8.x) on; fp16 on Volta/Turing (7.x), whose tensor cores do fp16 only; older cards
    (Pascal consumer GPUs run fp16 at a fraction of fp32 speed) stay fp32. torch.cuda.is_bf16_supported() is not
    used: by default it also counts bf16 emulated through fp32, which is slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major = cuda_capability(device)[0]
        return "bf16" if major >= 8 else "fp16" if major >= 7 else "no"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"  # mps, xpu, ...: not measured here, so the safe choice


def resolve_mixed_precision(requested: str | None, device: torch.device | str) -> str:
    """'no', 'fp16' or 'bf16' for a requested value (None counts as 'auto'); see the module docstring for the order."""
    if requested is not None and requested not in CHOICES:
        raise ValueError(f"unknown mixed precision {requested!r}; choose from {', '.join(CHOICES)}")
    if requested in EXPLICIT:
        return requested
    launcher = os.environ.get(LAUNCHER_ENV, "").strip().lower()
    if launcher in ("fp16", "bf16"):
        return launcher
    return hardware_precision(device)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """torch dtype of a resolved precision's autocast (None: fp32, no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def inference_autocast(device: torch.device | str, precision: str):
    """Autocast context for inference only (no GradScaler needed: nothing is backpropagated)."""
    dtype = autocast_dtype(precision)
    device = torch.device(device)
    if dtype is None or (device.type == "cpu" and dtype == torch.float16):  # fp16 on CPU: emulated, slower
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(requested: str | None, resolved: str) -> str:
    """'bf16 (auto)' / 'no (asked for)': the line a run prints, so a user sees why a precision was used."""
    if requested in EXPLICIT:
        return f"{resolved} (asked for)"
    launcher = os.environ.get(LAUNCHER_ENV, "").strip().lower()
    return f"{resolved} ({'from the launcher' if launcher == resolved and launcher != 'no' else 'auto'})"


def accelerator_precision(requested: str | None) -> str:
    """The resolved precision to build this process's Accelerator with, Accelerate's process-wide state made ready
    for it (the one path of training and evaluation alike).

    The device is PartialState's, the one Accelerator will reuse; ACCELERATE_USE_CPU must reach it as Accelerator's
    own state would pass it, or a CPU torchrun launch would be set up as one process.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    resolved = resolve_mixed_precision(requested, state.device)
    allow_new_precision(resolved)
    return resolved


def allow_new_precision(wanted: str) -> None:
    """One process may run several runs at different precisions (the benchmark's fp32 naive baseline, then
    hf_animals at `auto`; a study; tests), but Accelerate's AcceleratorState is a process-wide singleton that refuses
    a second precision. Clear it (not PartialState: devices and process group stay) when the precision changes."""
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != wanted:
        AcceleratorState._reset_state(reset_partial_state=False)
