"""Learning-rate range test (`--lr auto`): pick a run's lr from a short exponential sweep on the training split.

Why: the right lr depends on the data as much as on the model: on photos close to ImageNet a small backbone rate
protects good features, on data far from ImageNet the same rate underfits by 10+ points (README, recipe table). A
range test (Smith 2017, "Cyclical learning rates"; fastai's lr_find) measures it in a few hundred steps instead of a
sweep of full runs.

Procedure: start from the run's initial weights, raise the lr exponentially from `start_lr` to `end_lr`, one
optimizer step per batch, record the training loss, stop early once the smoothed loss exceeds `diverge` times its
minimum, then restore the initial weights (the run starts from exactly the state it would have without the probe).
Every optimizer parameter group keeps its ratio to the base lr, so a backbone group at 0.1x stays at 0.1x.

Choice rule: the lr at the minimum of the smoothed loss, divided by 10 (`min_div10`). Why this one and not the
steepest descent point: the steepest slope is a derivative of a noisy curve over few steps and jumps between runs
and seeds, while the minimum is robust; /10 backs off from the edge of divergence, where the loss is lowest only
for a moment at that lr. The chosen value is clamped into the swept range, so it is always an lr that was tried.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

__all__ = ['LrProbe', 'lr_range_test', 'smooth_losses', 'choose_lr', 'probe_for_run']


@dataclass
class LrProbe:
    """Result of a range test: the lrs tried, raw and smoothed losses, the chosen lr and the rule that chose it."""
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    chosen_lr: float
    rule: str
    start_lr: float
    end_lr: float
    diverged: bool

    def as_dict(self) -> dict:
        return asdict(self)


def smooth_losses(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as fastai's lr_find): early points are not pulled towards 0."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def choose_lr(lrs: list[float], smoothed: list[float], divide: float = 10.0) -> float:
    """lr at the minimum of the smoothed loss / `divide`, clamped into [min(lrs), max(lrs)] (see the module doc)."""
    if not lrs or len(lrs) != len(smoothed):
        raise ValueError('choose_lr needs one smoothed loss per lr')
    finite = [(s, lr) for s, lr in zip(smoothed, lrs) if math.isfinite(s)]
    if not finite:
        return lrs[0]
    best_lr = min(finite)[1]
    return min(max(best_lr / divide, min(lrs)), max(lrs))


def _cycle(batches: Iterable) -> Iterator:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError('lr_range_test got no batches')


def lr_range_test(model: nn.Module, make_optimizer: Callable[[], torch.optim.Optimizer], batches: Iterable,
                  loss_of_batch: Callable[[object], torch.Tensor], *, start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 200, diverge: float = 4.0, beta: float = 0.9) -> LrProbe:
    """Sweep the lr exponentially over `steps` optimizer steps and choose one (module doc); weights are restored.

    make_optimizer: a fresh optimizer over the model's trainable parameters at the run's base lr (its groups' lr
      ratios are kept); batches: re-iterable (a DataLoader), cycled if shorter than `steps`; loss_of_batch: the
      training loss of one batch (forward pass included), so the caller decides augmentation, Mixup, autocast.
    """
    if not (0 < start_lr < end_lr) or steps < 2:
        raise ValueError(f'need 0 < start_lr < end_lr and steps >= 2, got {start_lr}, {end_lr}, {steps}')
    saved_state = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer()
    ratios = [g['lr'] / optimizer.param_groups[0]['lr'] for g in optimizer.param_groups]
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, diverged, best, avg = [], [], False, math.inf, 0.0
    try:
        for step, batch in zip(range(steps), _cycle(batches)):
            lr = start_lr * growth ** step
            for group, ratio in zip(optimizer.param_groups, ratios):
                group['lr'] = lr * ratio
            loss = loss_of_batch(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value if math.isfinite(value) else math.inf)
            avg = beta * avg + (1 - beta) * losses[-1]
            current = avg / (1 - beta ** len(losses))  # the last point of smooth_losses(losses, beta)
            best = min(best, current)
            if not math.isfinite(current) or current > diverge * best:
                diverged = True
                break
    finally:
        model.load_state_dict(saved_state)
    smoothed = smooth_losses(losses, beta)
    return LrProbe(lrs, losses, smoothed, choose_lr(lrs, smoothed), 'min_div10', start_lr, end_lr, diverged)


PROBE_FILE = "lr_probe.json"
PROBE_FIGURE = "lr_probe.png"


def probe_run_lr(run_dir: Path, module: nn.Module, make_optimizer: Callable[[float], torch.optim.Optimizer],
                 loader: Iterable, loss_of_batch: Callable[[object], torch.Tensor], *, steps: int, resume: bool,
                 title: str = "", is_main_process: bool = True) -> LrProbe:
    """`--lr auto` for one run: the range test on the run's own training batches, saved as lr_probe.json + .png.

    A resumed run reads its earlier choice back instead of probing again, so it continues with the same lr.
    make_optimizer(lr): the run's optimizer (its parameter groups) at base lr `lr`.
    """
    from . import plots, runs

    path = Path(run_dir) / PROBE_FILE
    if resume and path.is_file():
        return LrProbe(**runs.read_json(path))
    probe = lr_range_test(module, lambda: make_optimizer(1e-3), loader, loss_of_batch, steps=steps)
    if is_main_process:
        runs.write_json(path, probe.as_dict())
        plots.plot_lr_probe(probe.lrs, probe.losses, probe.smoothed, probe.chosen_lr, Path(run_dir) / PROBE_FIGURE,
                            title=title or f"lr range test: chosen {probe.chosen_lr:.2g} (min loss / 10)")
    return probe


def probe_summary(probe: LrProbe) -> dict:
    """What run.json records of a probe (the curve itself is in lr_probe.json)."""
    return {"chosen_lr": probe.chosen_lr, "rule": probe.rule, "start_lr": probe.start_lr, "end_lr": probe.end_lr,
            "steps_run": len(probe.lrs), "diverged": probe.diverged, "figure": PROBE_FIGURE}


def probe_for_run(cfg, out: Path, split_data, batch_augment, loader, make_optimizer, accelerator):
    """`--lr auto`: the range test (lr_probe) with the run's module, optimizer groups, augmentation and loss (plain
    cross-entropy with the run's label smoothing; Mixup is left out of the probe), on the training device."""
    import torch.nn.functional as F

    from .models import set_train_mode

    module = split_data.train_module.to(accelerator.device)
    set_train_mode(module)

    def loss_of(batch):
        x, y = (t.to(accelerator.device) for t in batch)
        x = batch_augment(x) if batch_augment is not None else x
        with accelerator.autocast():
            return F.cross_entropy(module(x).float(), y, label_smoothing=cfg.label_smoothing)

    probe = probe_run_lr(out, module, make_optimizer, loader, loss_of, steps=cfg.lr_probe_steps,
                                  resume=cfg.resume, is_main_process=accelerator.is_main_process,
                                  title=f"{cfg.model} [{cfg.unfreeze}]: lr range test")
    accelerator.print(f"lr range test: lr {probe.chosen_lr:.3g} (min smoothed loss / 10, {len(probe.lrs)} steps)")
    return probe
