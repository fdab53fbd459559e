"""What a run costs, measured so that it means the same thing alone or inside a study.

Three measurements, each a mechanism of its own, and the columns the study's comparison shows from them:

- `PeakMemory`: the run's own peak memory (not the process's lifetime peak) on CPU and GPU.
- `measure_latency`: inference time with an adaptive number of repeats (torch.utils.benchmark), its median and
  spread, at batch 1 and 32, with the thread count it ran under.
- `timed` / `cost_totals`: one-time costs (decoded-image cache, frozen-prefix feature cache) next to the training
  time, and their total, which every efficiency statement should use.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UserError

MB = 2**20
LATENCY_BATCH_SIZES = (1, 32)
LATENCY_METHOD = "torch.utils.benchmark.Timer.adaptive_autorange"
# On a CPU, latency and throughput are timed on one thread (per core). With the process's threads, the OpenMP
# fork/join and whatever else the host ran decided the figure: the same model and weights timed 2.1 to 4.4 ms at
# batch 1 and 38 to 60 ms at batch 32 on the idle 2-core build machine; on one thread 3.1 to 3.9 ms and 94 to 100 ms.
# One request per core is also how CPU servers run small-model inference. The thread count is recorded.
CPU_LATENCY_THREADS = 1


# ----------------------------------------------------------------------------------------------------------------
# Peak memory of one run
# ----------------------------------------------------------------------------------------------------------------
def _read_status_kb(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None where there is no such file (not Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_kernel_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM, and ru_maxrss with it) to the current RSS.

    Linux >= 4.0 resets it when "5" is written to /proc/self/clear_refs. False where that is not possible.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _read_status_kb("VmHWM") is not None


def release_freed_memory() -> None:
    """Return memory that earlier runs freed to the OS, so it does not count as this run's resident memory.

    Python objects of an earlier run may still wait for the cycle collector, and glibc keeps freed heap pages
    mapped until asked (malloc_trim) - both would otherwise show up in the next run's resident set.
    """
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            pass


class _RssSampler:
    """Fallback where the kernel peak cannot be reset: a daemon thread samples the RSS (psutil) every few ms.

    It misses spikes shorter than the interval, so it is used only when /proc/self/clear_refs is unavailable.
    """

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._process, self._stop = psutil.Process(), threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True)
        self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._process.memory_info().rss)


class PeakMemory:
    """The peak memory of one run, measured from the run's start: the same alone (`train.py`) or tenth in a study.

    Why this measure: the process-wide counters (`ru_maxrss`, `torch.cuda.max_memory_allocated`) never go down, so
    inside a study every run inherited the peaks of the runs before it. Here, at the run's start:
    - CPU: memory earlier runs freed is handed back to the OS (`release_freed_memory`), then the kernel's own
      resident-set high-water mark is reset (/proc/self/clear_refs); the peak is VmHWM at the end. The kernel
      updates it on every page fault, so no spike is missed and nothing runs in the background; where the reset
      is not allowed a sampling thread (`_RssSampler`) stands in. The number is the process's peak resident set
      *during the run* - interpreter and libraries included, as a user running `train.py` needs it - not an
      increase over the start, which would depend on what earlier runs happened to import or leave loaded. Data
      loader worker processes (only the naive pipeline uses them) are not included.
    - GPU: the allocator's peak counters are reset (`torch.cuda.reset_peak_memory_stats`) and the peak is
      `max_memory_allocated` - tensors only, not the allocator's cache; the host's peak RSS is reported too.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sampler = None if _reset_kernel_rss_peak() else _RssSampler()
        self.start_rss_mb = _current_rss_bytes() / MB

    @property
    def method(self) -> str:
        host = "VmHWM reset at run start" if self._sampler is None else "RSS sampled every 5 ms"
        return f"cuda max_memory_allocated reset at run start; host {host}" if self.device.type == "cuda" else host

    def peak_rss_mb(self) -> float:
        if self._sampler is not None:
            return max(self._sampler.peak, _current_rss_bytes()) / MB
        return _read_status_kb("VmHWM") / 1024

    def result(self) -> dict[str, Any]:
        """run.json fields: `peak_memory_mb` (GPU tensors on a GPU, else host RSS), `peak_rss_mb`, the method."""
        rss = self.peak_rss_mb()
        peak = torch.cuda.max_memory_allocated(self.device) / MB if self.device.type == "cuda" else rss
        return {"peak_memory_mb": peak, "peak_rss_mb": rss, "rss_at_start_mb": self.start_rss_mb,
                "peak_memory_method": self.method}

    def stop(self) -> dict[str, Any]:
        """`result()`, and the sampling thread (if any) ends."""
        out = self.result()
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        return out


def _current_rss_bytes() -> int:
    kb = _read_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


# ----------------------------------------------------------------------------------------------------------------
# Latency and throughput
# ----------------------------------------------------------------------------------------------------------------
def batch_of(pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`batch_size` real images (repeated when the split has fewer), so every model is timed on the same input."""
    index = torch.arange(batch_size) % len(pixels)
    return pixels[index]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: torch.nn.Module, x: torch.Tensor, *, threshold: float = 0.1, min_run_time: float = 0.2,
                 max_run_time: float = 2.0, min_repeats: int = 4) -> dict[str, Any]:
    """Median and spread of `model(x)` (no grad), repeated until the spread settles or the time budget is spent.

    `Timer.adaptive_autorange` is `blocked_autorange`'s loop with a stopping rule: it picks how many calls make one
    timed block (so timer and synchronisation overhead is negligible), then times blocks until there are more than
    3, `min_run_time` has passed and the interquartile range is below `threshold` x the median - or `max_run_time`
    is spent (a busy machine). The budget is raised to fit `min_repeats` blocks of even a slow call (a large batch
    on a CPU), and blocks are added if it still fell short: one block has no spread. Threads: the process's torch
    thread count (Timer would otherwise pin 1), stated in the result, as are the number of blocks and calls per
    block.
    """
    from torch.utils import benchmark

    device = x.device

    def forward():
        with torch.no_grad():
            return model(x)

    forward()  # warm-up: lazy initialisation, cuDNN autotuning, allocator growth
    _sync(device)
    t0 = time.perf_counter()
    forward()
    _sync(device)
    call_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    m = timer.adaptive_autorange(threshold=threshold, min_run_time=min_run_time,
                                 max_run_time=max(max_run_time, 1.2 * min_repeats * call_s))
    raw = list(m.raw_times)
    while len(raw) < min_repeats:  # the warm-up call underestimated (a busy machine): top up, same block size
        raw += timer.timeit(m.number_per_run).raw_times
    m = benchmark.Measurement(number_per_run=m.number_per_run, raw_times=raw, task_spec=m.task_spec)
    times = m.times
    return {"batch_size": len(x), "median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3, "repeats": len(times), "calls_per_repeat": m.number_per_run,
            "threads": threads, "device": str(device), "method": LATENCY_METHOD}


def measure_latency(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device | str,
                    batch_sizes: tuple[int, ...] = LATENCY_BATCH_SIZES, **timing) -> dict[str, Any]:
    """{"batch_1": {...}, "batch_32": {...}, "threads": n, "ms_per_image": the batch-1 median}.

    Each batch's entry is `time_forward`'s, plus `ms_per_image` and `images_per_s` (from the median). Batch 1 is
    a deployment's latency, batch 32 its throughput; both on the same real images (`batch_of`)."""
    device = torch.device(device)
    model = model.to(device).eval()
    out: dict[str, Any] = {}
    for bs in batch_sizes if len(pixels) else ():  # an empty split has nothing to time
        with _threads(CPU_LATENCY_THREADS if device.type == "cpu" else None):
            entry = time_forward(model, batch_of(pixels, bs).to(device), **timing)
        entry["ms_per_image"] = entry["median_ms"] / bs
        entry["images_per_s"] = 1e3 * bs / entry["median_ms"] if entry["median_ms"] > 0 else None
        out[f"batch_{bs}"] = entry
    out["threads"] = CPU_LATENCY_THREADS if device.type == "cpu" else torch.get_num_threads()
    out["ms_per_image"] = out.get("batch_1", {}).get("median_ms")  # batch-1 median: `latency_ms_per_image`
    return out


class _threads:
    """`with _threads(n):` torch runs on n CPU threads inside the block (None: unchanged), restored afterwards."""

    def __init__(self, n: int | None):
        self.n, self.saved = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


# ----------------------------------------------------------------------------------------------------------------
# One-time costs and totals
# ----------------------------------------------------------------------------------------------------------------
def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """(fn(*args, **kwargs), seconds it took)."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def cost_totals(image_cache_s: float, feature_cache_s: float, train_time_s: float) -> dict[str, float]:
    """run.json's one-time and total costs. `cache_s`: what this run spent on its caches (decoding the images, or
    reading back a cache an earlier run made; the frozen-prefix features); `total_s` = cache_s + train_time_s, the
    number efficiency statements should compare (a head-only run's few seconds of training rest on its cache)."""
    cache_s = image_cache_s + feature_cache_s
    return {"image_cache_s": image_cache_s, "feature_cache_s": feature_cache_s, "cache_s": cache_s,
            "total_s": cache_s + train_time_s}


# ----------------------------------------------------------------------------------------------------------------
# The study's cost columns (study.py splices these into its comparison)
# ----------------------------------------------------------------------------------------------------------------
# comparison.csv columns this module fills, and where study.COMPARISON_COLUMNS places them.
TIME_COLUMNS = ("cache_s", "total_s")  # after time_to_best_s
LATENCY_COLUMNS = ("latency_iqr_ms", "batch32_ms", "batch32_iqr_ms", "throughput_img_s", "latency_threads")  # after
# latency_ms_per_image (the batch-1 median)
TIME_MD = (("cache_s", "cache s"), ("total_s", "total s"))
LATENCY_MD = (("latency_ms_per_image", "ms/img (b1)"), ("latency_iqr_ms", "± IQR"),
              ("throughput_img_s", "img/s (b32)"), ("latency_threads", "threads"))

COLUMN_NOTE = ("cache s: one-time decoded-image and frozen-feature caches; total s = cache + train (compare costs "
               "on this); peak MB: the run's own peak (GPU tensors, else process RSS during the run); ms/img (b1): "
               "median batch-1 latency ± its interquartile range; img/s (b32): throughput at batch 32; threads: torch "
               "threads while timing (one on a CPU: per-core figures, stable where multi-threaded ones were not).")


def comparison_costs(run: dict) -> dict[str, Any]:
    """The cost cells of one comparison row, from a run.json (+ its metrics); older run folders without the new
    fields give their feature-cache time as the cache and no latency spread rather than failing."""
    latency = run.get("latency") or run.get("metrics", {}).get("latency") or {}
    b1, b32 = latency.get("batch_1", {}), latency.get("batch_32", {})
    totals = cost_totals(run.get("image_cache_s", 0.0), run.get("feature_cache_s", 0.0), run["train_time_s"])
    return {
        "cache_s": totals["cache_s"], "total_s": totals["total_s"],
        "latency_ms_per_image": b1.get("median_ms", run.get("latency_ms_per_image")),
        "latency_iqr_ms": b1.get("iqr_ms"), "batch32_ms": b32.get("median_ms"), "batch32_iqr_ms": b32.get("iqr_ms"),
        "throughput_img_s": b32.get("images_per_s"), "latency_threads": latency.get("threads"),
    }


def latency_text(cells: dict) -> str:
    """One latency in words, from `comparison_costs` cells or a comparison.csv row: '2.50 ms ± 0.10 ms (median ±
    IQR of batch-1 timings, 4 threads; batch 32: 812 images/s)'. A run timed before spreads were recorded gives its
    one number as such; none gives 'n/a'. The report and the model card both say it this way."""
    median, iqr = cells.get("latency_ms_per_image"), cells.get("latency_iqr_ms")
    if median is None:
        return "n/a"
    if iqr is None:
        return f"{median:.2f} ms (batch 1, a single measurement)"
    threads = cells.get("latency_threads")
    text = (f"{median:.2f} ms ± {iqr:.2f} ms (median ± IQR of batch-1 timings, {threads} "
            f"thread{'' if str(threads) == '1' else 's'}")
    throughput = cells.get("throughput_img_s")
    return text + (f"; batch 32: {throughput:.0f} images/s)" if throughput else ")")


# ----------------------------------------------------------------------------------------------------------------
# Do latencies agree across runs? (same architecture and input size must give the same inference cost)
# ----------------------------------------------------------------------------------------------------------------
def latency_groups(study_dir: str | Path) -> list[dict[str, Any]]:
    """Runs of a finished study folder that share model and image size, with their batch-1 and batch-32 medians and
    the max/min ratio of each group: the regimes change which weights trained, not the inference graph, so the
    ratio shows how reproducible the latency measurement is (the README's check: within 30 %)."""
    runs = sorted(Path(study_dir).glob("runs/*/run.json"))
    if not runs:
        raise UserError(f"{study_dir} holds no runs/*/run.json: not a study folder (make one with scripts/study.py)")
    groups: dict[tuple[str, int], list[dict]] = {}
    for path in runs:
        run = json.loads(path.read_text())
        if run.get("status") != "complete":
            continue
        cells = comparison_costs(run)
        groups.setdefault((run["model"], run["image_size"]), []).append(
            {"run": path.parent.name, "b1_ms": cells["latency_ms_per_image"], "b1_iqr_ms": cells["latency_iqr_ms"],
             "b32_ms": cells["batch32_ms"], "threads": cells["latency_threads"]})
    out = []
    for (model, size), runs in sorted(groups.items()):
        out.append({"model": model, "image_size": size, "runs": runs,
                    "b1_ratio": _spread_ratio([r["b1_ms"] for r in runs]),
                    "b32_ratio": _spread_ratio([r["b32_ms"] for r in runs])})
    return out


def _spread_ratio(values: list[float | None]) -> float | None:
    known = [v for v in values if v]
    return max(known) / min(known) if len(known) > 1 else None


def format_latency_groups(groups: list[dict[str, Any]]) -> str:
    """A plain-text table of `latency_groups`, one line per run and a max/min line per group."""
    lines = [f"{'run':45s} {'b1 ms':>9s} {'± IQR':>8s} {'b32 ms':>9s} {'threads':>7s}"]
    for g in groups:
        lines.append(f"# {g['model']} @ {g['image_size']} px")
        for r in g["runs"]:
            lines.append(f"{r['run']:45s} {_num(r['b1_ms']):>9s} {_num(r['b1_iqr_ms']):>8s} {_num(r['b32_ms']):>9s} "
                         f"{r['threads'] if r['threads'] is not None else '-':>7}")
        if g["b1_ratio"] is not None:
            lines.append(f"  max/min: batch 1 {g['b1_ratio']:.2f}, batch 32 "
                         f"{_num(g['b32_ratio'], '.2f')} ({'within' if _within(g) else 'NOT within'} 30 %)")
    return "\n".join(lines)


def _within(group: dict, tolerance: float = 0.30) -> bool:
    return all(r is None or r <= 1 + tolerance for r in (group["b1_ratio"], group["b32_ratio"]))


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)

