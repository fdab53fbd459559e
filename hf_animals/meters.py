"""Epoch statistics kept on the training device, read by the host only a few times a second.

Why: every `.item()` (or `if tensor:`) is a host-device synchronisation; on a GPU it drains the queue of kernels
the host has already launched, so a loop that reads its loss every step leaves the GPU idle between steps. Here
the loss sum, the correct count and the seen count stay tensors on the device; the host reads them at *sync
points* only: the progress-bar refresh (at most every `every` steps and `min_interval_s` seconds apart) and the
end of the epoch. A non-finite loss poisons the loss sum for good (NaN and inf stay non-finite under addition), so
checking the sum at each sync point catches every bad step, just later than a per-step check; the step where it
first happened is remembered on the device too. The epoch raises before anything is saved, so the last good
checkpoint stays on disk, as before.
"""
from __future__ import annotations

import time

import torch


class NonFiniteLoss(RuntimeError):
    """A step's loss was NaN or inf; `step` is the first such step of the epoch (0-based)."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class EpochMeter:
    """Loss sum, correct count and seen count of one epoch, accumulated with device ops only."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.loss_sum = torch.zeros((), device=self.device)  # float32, like the old loop's accumulator
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.seen = torch.zeros((), dtype=torch.int64, device=self.device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.steps = 0  # host-side count, needs no sync

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add one step (mean loss over the batch, its logits and labels) without synchronising."""
        loss = loss.detach()
        self.loss_sum += loss * y.numel()  # same float32 ops as before: history numbers stay identical
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += y.numel()
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, self.steps, self.first_bad_step)
        self.steps += 1

    def read(self) -> dict[str, float]:
        """One sync: the running totals on the host; raises NonFiniteLoss if any step so far was not finite."""
        loss_sum, correct, seen, bad = torch.stack(
            [self.loss_sum.double(), self.correct.double(), self.seen.double(), self.first_bad_step.double()]
        ).tolist()
        if bad >= 0:
            raise NonFiniteLoss(int(bad))
        return {"loss_sum": loss_sum, "correct": correct, "seen": seen}

    def totals(self, accelerator) -> tuple[float, float, float]:
        """(mean loss, accuracy, images) over all processes; checks finiteness first (one sync, one reduce).

        The reduced tensor is float32 [loss_sum, correct, seen], exactly what the per-step `.item()` loop built,
        so the history's train_loss/train_acc are bit-for-bit what they were.
        """
        self.read()
        stats = torch.stack([self.loss_sum, self.correct.float(), self.seen.float()])
        loss_sum, correct, seen = accelerator.reduce(stats, "sum").tolist()
        return loss_sum / seen, correct / seen, seen


class ProgressRefresher:
    """Drives a tqdm bar without per-step syncs: bar.update every step (host only), numbers at sync points.

    A sync point is a step at least `every` steps and `min_interval_s` seconds after the previous one; it also
    checks finiteness (via EpochMeter.read), whether or not the bar is shown, so a diverged run stops within about
    a second instead of at the end of a long epoch.
    """

    def __init__(self, bar, meter: EpochMeter, *, every: int = 10, min_interval_s: float = 0.5,
                 num_processes: int = 1, clock=time.perf_counter):
        self.bar, self.meter, self.every, self.min_interval_s = bar, meter, every, min_interval_s
        self.num_processes, self.clock = num_processes, clock
        self.start = self.last = clock()
        self.last_step = 0
        self.syncs = 0

    def step(self) -> None:
        """Call after each meter.update."""
        self.bar.update(1)
        now = self.clock()
        if self.meter.steps - self.last_step >= self.every and now - self.last >= self.min_interval_s:
            self.sync(now)

    def sync(self, now: float | None = None) -> dict[str, float]:
        now = self.clock() if now is None else now
        totals = self.meter.read()
        self.syncs += 1
        self.last, self.last_step = now, self.meter.steps
        seen = max(totals["seen"], 1)
        self.bar.set_postfix(loss=f"{totals['loss_sum'] / seen:.3f}", acc=f"{totals['correct'] / seen:.3f}",
                             img_s=f"{seen * self.num_processes / max(now - self.start, 1e-9):.0f}")
        return totals
