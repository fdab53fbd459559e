"""THE preprocessing: how an image file becomes the tensor a model sees, and the record that travels with the model.

    file ──rgb_image──▶ RGB (EXIF rotation, transparency on white) ──resize to S×S──▶ uint8 S×S×3
         ──normalize_batch(mean, std)──▶ float input

Training (the decoded-image cache), evaluation and prediction all call these functions, so the pixels a model
is evaluated on are the pixels it was trained on. The `Preprocessing` record (size, interpolation, mean, std) is
written into the saved model's timm `pretrained_cfg` as a squash resize (`crop_mode='squash'`, `crop_pct=1.0`):
a plain timm user (`timm.create_model('hf-hub:…', pretrained=True)` → `resolve_data_config` → `create_transform`)
then resizes exactly as `predict.py` does, and there is no second, private copy of the preprocessing to disagree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from timm.data.transforms import str_to_pil_interp

from .errors import UserError

__all__ = ['INTERPOLATION', 'CROP_MODE', 'rgb_image', 'rgb_resized', 'load_rgb_resized', 'normalize_batch',
           'Preprocessing']

#: The resize training uses for every model. Pretrained weights recommend their own (bicubic for MobileNetV2),
#: but one interpolation lets all models share one decoded-image cache; the saved model records this one.
INTERPOLATION = 'bilinear'
#: timm's name for "resize both edges to the target, aspect ratio not kept": how training fits images to S×S.
CROP_MODE = 'squash'


def rgb_image(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB: EXIF rotation applied, transparency composited on white, 16-bit scaled to 8-bit."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("P", "L", "RGB") and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    if mode.startswith("I") or mode == "F":
        # PIL's convert() clips 16-bit values at 255 (a nearly white image); scale the range instead.
        values = np.asarray(image, dtype=np.float32)
        peak = values.max(initial=0.0)
        if mode.startswith("I;16") or peak > 255:
            values = values / 257.0  # 0..65535 -> 0..255
        elif mode == "F" and peak <= 1.0:
            values = values * 255.0  # 0..1 floats
        return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def rgb_resized(image: Image.Image, size: int, interpolation: str = INTERPOLATION) -> np.ndarray:
    """uint8 (size, size, 3): THE decode path shared by the cache, evaluation and predict.

    Aspect ratio not kept, as the model was trained. The resize is PIL's, with the same resample filter that
    torchvision's `Resize` (timm's squash transform) maps `interpolation` to, so both give the same pixels.
    """
    image = rgb_image(image)
    if image.size != (size, size):
        image = image.resize((size, size), str_to_pil_interp(interpolation))
    return np.array(image, dtype=np.uint8)


def load_rgb_resized(path, size: int, interpolation: str = INTERPOLATION) -> np.ndarray:
    """rgb_resized of an image file; an unreadable file is a UserError naming it."""
    try:
        with Image.open(path) as image:
            return rgb_resized(image, size, interpolation)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def normalize_batch(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 (x/255 - mean)/std on x's device: the one place images are normalised (train, eval, predict)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize_batch expects uint8 images, got {x_uint8.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
    return (x_uint8.float() / 255.0 - mean_t) / std_t


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: S×S RGB images resized with `interpolation` (aspect ratio not kept), then
    normalised with `mean`/`std`. Saved in, and read back from, the model's timm `pretrained_cfg`."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = INTERPOLATION

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        str_to_pil_interp(self.interpolation)  # KeyError for a name PIL has no filter for

    @classmethod
    def from_pretrained_cfg(cls, cfg: Mapping[str, Any]) -> "Preprocessing":
        """The preprocessing a saved model records (its pretrained_cfg, as `to_pretrained_cfg` wrote it).

        The crop keys are not read: this project always squashes the whole image to S×S (`to_pretrained_cfg` says
        so); a model saved before they were written is read the same way.
        """
        size = cfg["input_size"]
        if len(size) != 3 or size[1] != size[2]:
            raise UserError(f"the model's pretrained_cfg input_size {list(size)} is not a square 3×S×S image")
        return cls(int(size[-1]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation") or INTERPOLATION)

    @classmethod
    def from_model(cls, model: torch.nn.Module, image_size: int | None = None) -> "Preprocessing":
        """How training feeds `model`: its weights' mean/std, `image_size` (default: the weights' input size) and
        the project's one resize (`INTERPOLATION`)."""
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        return cls(int(image_size or cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]), INTERPOLATION)

    def to_pretrained_cfg(self) -> dict:
        """The pretrained_cfg keys that make timm's `resolve_data_config` + `create_transform` do the same resize."""
        return dict(input_size=(3, self.image_size, self.image_size), crop_pct=1.0, crop_mode=CROP_MODE,
                    interpolation=self.interpolation, mean=self.mean, std=self.std)

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """uint8 (3, S, S) pixels of an image file (UserError naming an unreadable file)."""
        array = load_rgb_resized(path, self.image_size, self.interpolation)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """The model's float input for uint8 (N, 3, S, S) pixels."""
        return normalize_batch(x_uint8, self.mean, self.std)
