"""Training augmentation: per-image random crop, flip and colour jitter on uint8 images.

`BatchAugment` is what training uses (per image, applied to a whole batch on the training device, after the
loader); `train_augmentation` is the same recipe as a per-image torchvision v2 pipeline (DataLoader-side use, the
benchmark's naive baseline); `build_transforms` is the classic PIL → normalised tensor pipeline. Augmentation keeps
uint8 so normalisation stays in one place (`preprocess.normalize_batch`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from . import preprocess


def train_augmentation(image_size: int):
    """Light augmentation on uint8 CHW tensors (or PIL images), output stays uint8: small crop/scale, flip,
    colour jitter. Val/test get none."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop((image_size, image_size), scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ])


class BatchAugment(torch.nn.Module):
    """The training augmentation of `train_augmentation`, drawn per image but applied to a whole uint8 batch at once.

    Why hand-written: torchvision.transforms.v2 draws one set of random parameters per call, so on a batch every image
    would get the same crop, and per-image v2 calls in the DataLoader cost 6-15 % of a step on a 2-core CPU (measured,
    data-wait). Here each image gets its own crop box (one batched affine_grid + grid_sample resamples them all), flip
    and colour factors, as a few tensor ops on the training device (the GPU when there is one). Randomness comes from
    torch's global generator of that device, which the training loop seeds per epoch.
    """

    def __init__(self, size: int, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), flip: float = 0.5,
                 brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        super().__init__()
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def extra_repr(self) -> str:
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio=({self.ratio[0]:.3f}, "
                f"{self.ratio[1]:.3f})), RandomHorizontalFlip(p={self.flip}), ColorJitter(brightness="
                f"{self.brightness}, contrast={self.contrast}, saturation={self.saturation}), per image")

    def _uniform(self, n: int, low: float, high: float, device) -> torch.Tensor:
        return torch.empty(n, device=device).uniform_(low, high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.ndim == 3
        x = x[None] if single else x
        n, _, h, w = x.shape
        dev = x.device
        area = self._uniform(n, *self.scale, dev) * h * w
        ratio = self._uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), dev).exp()
        cw, ch = (area * ratio).sqrt().clamp(max=w), (area / ratio).sqrt().clamp(max=h)
        x0, y0 = torch.rand(n, device=dev) * (w - cw), torch.rand(n, device=dev) * (h - ch)
        flip = torch.where(torch.rand(n, device=dev) < self.flip, -1.0, 1.0)
        # Crop box (and mirror) as a separable sampling grid in normalised coordinates (affine_grid without rotation).
        base = (torch.arange(self.size, device=dev) * 2 + 1) / self.size - 1
        gx = (cw / w * flip)[:, None] * base + ((2 * x0 + cw) / w - 1)[:, None]
        gy = (ch / h)[:, None] * base + ((2 * y0 + ch) / h - 1)[:, None]
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Brightness b, contrast c and saturation s are all linear in RGB: one 3x3 matrix + offset per image,
        #   y = c*b*S x + (1-c)*m,  S = s*I + (1-s)*1*luma^T,  m = b * mean luma of the crop.
        b, c, sat = (self._uniform(n, 1 - a, 1 + a, dev) for a in (self.brightness, self.contrast, self.saturation))
        luma = torch.tensor(LUMA, device=dev)
        eye = torch.eye(3, device=dev)
        matrix = (c * b)[:, None, None] * (sat[:, None, None] * eye + (1 - sat)[:, None, None] * luma[None, None, :])
        offset = (1 - c) * b * (out.mean((2, 3)) @ luma)
        out = torch.bmm(matrix, out.flatten(2)).view_as(out) + offset.view(-1, 1, 1, 1)
        out = out.clamp_(0, 255).round_().to(torch.uint8)
        return out[0] if single else out


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def batch_augmentation(image_size: int) -> BatchAugment:
    """Training augmentation for uint8 batches on the training device (same parameters as train_augmentation)."""
    return BatchAugment(image_size)


def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                     augment: bool = True):
    """The classic per-image torchvision pipeline for PIL input (naive baseline, docs): RGB → resize →
    [augment] → float tensor → normalise. Same RGB conversion and resize as data.rgb_resized."""
    from torchvision.transforms import v2

    steps = [v2.Lambda(preprocess.rgb_image, Image.Image), v2.Resize((image_size, image_size), antialias=True)]
    if train and augment:
        steps += list(train_augmentation(image_size).transforms)
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
