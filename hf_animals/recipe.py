"""Training-recipe ingredients on top of timm: new-head initialisation, weight EMA, Mixup/CutMix, test-time flips.

Each is a small function or class the training loop, evaluation, prediction and the app call; none of them knows
about run folders or the CLI. Why each exists (measured on real images, see the README's recipe table):
  * new-head init: timm's EfficientNet/MobileNet heads start uniform in +-1/sqrt(num_classes) (std ~0.18 for 10
    classes, ~11x PyTorch's default for a 1,280-input Linear): the first logits are huge, the loss starts near 8 instead
    of ln(10) = 2.3, and a short classifier-only fine-tune spends its epochs undoing that. Zero (or tiny) weights and a
    zero bias start every new head at the uniform prediction, as timm's `--head-init-scale` / `--head-init-bias` allow.
  * EMA: an average of the last few hundred steps' weights generalises better than the last step's, for free.
  * Mixup/CutMix: the strongest regulariser for training a backbone on a few thousand images.
  * TTA: the horizontal flip is label-preserving for photos; averaging both views' probabilities is a cheap gain.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .catalogue import weight_source

__all__ = [
    'head_is_new', 'init_new_head', 'make_ema', 'make_run_ema', 'ema_decay_for', 'MixupCutmix', 'soft_target_loss',
    'tta_views', 'tta_probabilities',
]


# ----------------------------------------------------------------------------------------------------------------
# New-head initialisation
# ----------------------------------------------------------------------------------------------------------------
def head_is_new(model: nn.Module) -> bool:
    """Whether the model's classifier was just created (random) rather than loaded trained.

    A model saved by this project (run folder, local-dir:, hf-hub:) keeps its trained head unless it was loaded for a
    different class count, in which case `models` replaced the head and dropped the saved class names. Every other
    source (ImageNet, PyPI, a file, scratch, random) gets a new head for the study's classes.
    """
    source = weight_source(getattr(model, 'pretrained_source', ''))
    if source.kind != 'saved':
        return True
    return not model.pretrained_cfg.get('label_names')


@torch.no_grad()
def init_new_head(model: nn.Module, scale: float | None = 0.0, bias: float | None = 0.0) -> bool:
    """Rescale a NEW classifier's weights by `scale` and set its bias to `bias` (timm's --head-init-scale/-bias).

    scale 0 gives zero weights: every class starts at probability 1/num_classes (loss ln(num_classes)), and the first
    gradient step moves the head along the features' class means. The backbone gets no gradient through a zero head
    for exactly one step, which costs nothing. None leaves that part as the architecture initialised it.
    A head loaded trained (`head_is_new` False) is never touched. Returns whether the head was changed.
    """
    if not head_is_new(model) or (scale is None and bias is None):
        return False
    linears = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f'{type(model).__name__} has no Linear classifier to initialise')
    head = linears[-1]  # the output layer (a head may hold a hidden Linear before it)
    if scale is not None:
        head.weight.mul_(float(scale))
    if bias is not None and head.bias is not None:
        head.bias.fill_(float(bias))
    return True


# ----------------------------------------------------------------------------------------------------------------
# Weight EMA
# ----------------------------------------------------------------------------------------------------------------
def ema_decay_for(total_steps: int, fraction: float = 0.1, low: float = 0.9, high: float = 0.9999) -> float:
    """An EMA decay whose averaging horizon, 1/(1-decay) steps, is `fraction` of the run.

    Why: a fixed 0.9998 (timm's ImageNet default) averages ~5,000 steps, longer than a whole 30-epoch run on 3,000
    images (~2,800 steps), so the EMA would still remember the random start at the end. A tenth of the run averages
    the last few epochs, where the weights are good.
    """
    horizon = max(1.0, fraction * max(1, int(total_steps)))
    return min(high, max(low, 1.0 - 1.0 / horizon))


def make_ema(model: nn.Module, decay: float, warmup: bool = True):
    """timm's ModelEmaV3 of `model` (parameters and BatchNorm buffers), on the model's device.

    Call `ema.update(model, step=global_step)` after each optimizer step: the decay (with warm-up, so the first steps
    are not dominated by the initial weights) depends only on the step number, so a resumed run that restores
    `ema.state_dict()` and its step count continues exactly like an uninterrupted one.
    """
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=warmup, warmup_power=3 / 4)


# ----------------------------------------------------------------------------------------------------------------
# Mixup / CutMix
# ----------------------------------------------------------------------------------------------------------------
class MixupCutmix:
    """timm's `Mixup` (batch mode) that also accepts odd batch sizes; returns (mixed images, soft targets).

    timm's Mixup asserts an even batch (it pairs image i with image n-1-i). The last, smaller batch of an epoch can be
    odd, so the odd image out keeps its own pixels and gets the label-smoothed one-hot target the others' would have
    at lambda 1. Images must be float (normalised): mixing uint8 pixels would truncate.
    Targets are probability vectors (each row sums to 1); train with `soft_target_loss`.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1):
        from timm.data import Mixup

        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError('MixupCutmix needs mixup_alpha > 0 or cutmix_alpha > 0')
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                           mode='batch', label_smoothing=label_smoothing, num_classes=num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target

        if not x.is_floating_point():
            raise TypeError(f'MixupCutmix mixes float (normalised) images, got {x.dtype}')
        n = len(x) - len(x) % 2
        if n == 0:
            return x, mixup_target(y, self.num_classes, 1.0, self.label_smoothing)
        mixed, soft = self.mixup(x[:n], y[:n])
        if n == len(x):
            return mixed, soft
        rest = mixup_target(y[n:], self.num_classes, 1.0, self.label_smoothing)
        return torch.cat([mixed, x[n:]]), torch.cat([soft, rest])


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against probability targets (timm's SoftTargetCrossEntropy), in float32."""
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()(logits.float(), targets.float())


# ----------------------------------------------------------------------------------------------------------------
# Test-time augmentation
# ----------------------------------------------------------------------------------------------------------------
def tta_views(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The test-time views of a batch (N, C, H, W): the images and their horizontal mirror images."""
    return x, torch.flip(x, dims=(-1,))


@torch.no_grad()
def tta_probabilities(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Class probabilities averaged over `tta_views`: mean of softmax(model(view)), float32, (N, classes).

    Softmax before averaging (not logits): each view votes with a probability, so one over-confident view cannot
    outweigh the other. The views are flipped before normalisation, which commutes with a per-channel mean/std.
    """
    probs = [model(view).float().softmax(dim=1) for view in tta_views(x)]
    return torch.stack(probs).mean(dim=0)


def initial_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy of `model` (eval mode) on one batch before any training: how far the head starts from ln(K)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(x).float(), y).item()
    model.train(was_training)
    return loss if math.isfinite(loss) else float('inf')


def make_run_ema(cfg, model, dcfg: dict, split_data, steps_per_epoch: int, accelerator):
    """(EMA, module validating it) for --ema, else (None, None). The EMA copies the full model on its device; when
    validation runs on cached frozen-prefix features, the EMA is validated through its own trainable suffix (the
    frozen prefix never changes, so the cached features are the EMA's too). Registered for --resume."""
    from .evaluation import Normalized
    from .models import frozen_prefix_split

    if not cfg.ema:
        return None, None
    ema = make_ema(model, cfg.ema_decay or ema_decay_for(cfg.epochs * steps_per_epoch))
    accelerator.register_for_checkpointing(ema)
    if "val" in split_data.cached_splits:
        return ema, frozen_prefix_split(ema.module)[1]
    return ema, Normalized(ema.module, dcfg["mean"], dcfg["std"])
