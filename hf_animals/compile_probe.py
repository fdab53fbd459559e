"""Does `torch.compile` pay for itself over a 30-epoch run? Measured per family on this machine (issue 13).

Why a probe and not a default: compilation is a one-time cost of minutes on a CPU (Inductor generates and builds C++
kernels) and of tens of seconds on a GPU, while the per-step gain depends on the architecture and the device. A
default must come from both numbers: compile pays when `compile_s < epochs x steps_per_epoch x (eager - compiled)`.

For each family's protocol model (every layer trained, the regime that costs the most per step), at the run's
precision (`auto` as in training), channels_last and batch 32: a few eager training steps after a warm-up, then the
same with `torch.compile` (the first compiled step, which triggers compilation, is timed apart). Random weights:
step time does not depend on their values.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import catalogue, models, precision


@dataclass
class CompileProbe:
    family: str
    model: str
    image_size: int
    precision: str
    eager_step_s: float
    compiled_step_s: float
    compile_s: float  # the first compiled step minus one compiled step: what compilation itself cost
    run_steps: int
    run_saving_s: float  # (eager - compiled) x run_steps (default: 30 epochs of 3,000 images) - compile_s
    pays: bool

    def to_json(self) -> dict:
        return asdict(self)


def _train_step(model, optimizer, x, y, dtype):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _mean_step_s(step, n: int, device: torch.device) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def probe_family(family: str, image_size: int, steps: int = 5, batch_size: int = 32, train_images: int = 3000,
                 epochs: int = 30, device: str | None = None, backend: str = "inductor") -> CompileProbe:
    """Eager vs compiled training-step time of one family's model, and whether compilation pays over a run."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = catalogue.FAMILIES[family].model
    resolved = precision.resolve_mixed_precision("auto", dev)
    dtype = precision.autocast_dtype(resolved)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=dev)

    def fresh():
        torch.manual_seed(0)
        net = models.create_model(name, num_classes=10, pretrained=False).to(dev).to(memory_format=torch.channels_last)
        return net.train(), torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    net, opt = fresh()
    _mean_step_s(lambda: _train_step(net, opt, x, y, dtype), 2, dev)  # warm-up
    eager = _mean_step_s(lambda: _train_step(net, opt, x, y, dtype), steps, dev)
    net, opt = fresh()
    compiled = torch.compile(net, backend=backend)
    first = _mean_step_s(lambda: _train_step(compiled, opt, x, y, dtype), 1, dev)
    _mean_step_s(lambda: _train_step(compiled, opt, x, y, dtype), 1, dev)  # a recompile for the 2nd call, if any
    step = _mean_step_s(lambda: _train_step(compiled, opt, x, y, dtype), steps, dev)
    n_steps = epochs * -(-train_images // batch_size)
    compile_s = max(0.0, first - step)
    saving = n_steps * (eager - step) - compile_s
    return CompileProbe(family, name, image_size, resolved, eager, step, compile_s, n_steps, saving, saving > 0)


def format_table(results: list[CompileProbe]) -> str:
    lines = ["family              model                    px  prec   eager s/step  compiled s/step  compile s  "
             "run saving s  pays"]
    for r in results:
        lines.append(f"{r.family:<19} {r.model:<24} {r.image_size:>3}  {r.precision:<5} {r.eager_step_s:>13.4f} "
                     f"{r.compiled_step_s:>16.4f} {r.compile_s:>10.1f} {r.run_saving_s:>13.1f}  "
                     f"{'yes' if r.pays else 'no'}")
    return "\n".join(lines)
