"""A synthetic stand-in for Animals-10 that the project makes itself (no download, no network).

Each class is a shape family with its own colour/texture distribution. Colours overlap on purpose (dog, horse,
cat and squirrel are all brownish; elephant, cow and sheep greyish/white) and 10 % of objects get a random
colour, so a model has to learn shapes; random position, scale, rotation, background clutter and noise keep it
from being trivial. Files are written the way a scraped photo set looks: JPEG and PNG (.jpg/.jpeg/.JPG/.png),
RGB, RGBA, greyscale and palette images, varied sizes and aspect ratios, hash-like file names.
"""
from __future__ import annotations

import colorsys
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import UserError

# Animals-10's classes in its own (Italian folder) order; `data.ITALIAN_TO_ENGLISH` maps them back.
CLASS_NAMES = ("dog", "horse", "elephant", "butterfly", "chicken", "cat", "cow", "sheep", "spider", "squirrel")
ITALIAN_NAMES = ("cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca", "pecora", "ragno",
                 "scoiattolo")
MARKER = ".hf_animals_sample.json"  # hidden, so the data loader ignores it; lets a re-run replace its own output

# shape family, hue range (degrees), saturation range, value range, textures
_SPECS = {
    "dog": ("ellipse", (15, 45), (0.35, 0.8), (0.35, 0.85), ("plain", "noise", "stripes")),
    "horse": ("trapezoid", (10, 40), (0.3, 0.8), (0.2, 0.65), ("plain", "stripes")),
    "elephant": ("disc", (0, 360), (0.0, 0.18), (0.35, 0.75), ("noise", "plain")),
    "butterfly": ("bowtie", (0, 360), (0.6, 1.0), (0.6, 1.0), ("dots", "stripes")),
    "chicken": ("triangle", (0, 60), (0.0, 0.9), (0.7, 1.0), ("plain", "noise")),
    "cat": ("star", (15, 45), (0.0, 0.8), (0.3, 0.9), ("stripes", "plain")),
    "cow": ("rectangle", (0, 360), (0.0, 0.1), (0.05, 1.0), ("spots",)),
    "sheep": ("cloud", (30, 60), (0.0, 0.2), (0.75, 1.0), ("noise", "dots")),
    "spider": ("legs", (0, 360), (0.0, 0.5), (0.0, 0.35), ("plain",)),
    "squirrel": ("crescent", (15, 35), (0.5, 0.9), (0.4, 0.8), ("plain", "noise")),
}
SHAPES = tuple(spec[0] for spec in _SPECS.values())

# How files are stored, cycled per class so that even 16 images per class hold every kind.
_KINDS = ("jpg", "png", "jpeg", "rgba", "JPG", "grey-jpg", "png", "palette", "jpg", "jpeg", "grey-png", "jpg",
          "png", "rgba", "jpg", "palette")


def write_sample_dataset(out_dir, classes: int = 10, per_class: int = 60, size: int = 96, seed: int = 0,
                         italian: bool = False) -> Path:
    """Write `classes` folders of `per_class` images (about `size` px) to `out_dir`; returns the folder.

    Deterministic: the same arguments give byte-identical files. A folder this function wrote before is replaced;
    any other non-empty folder is refused, so a typo cannot delete someone's data.
    """
    if not 1 <= classes <= len(CLASS_NAMES):
        raise UserError(f"--classes must be between 1 and {len(CLASS_NAMES)}, got {classes}")
    if per_class < 1:
        raise UserError(f"--per-class must be at least 1, got {per_class}")
    if size < 16:
        raise UserError(f"--size must be at least 16 pixels, got {size}")
    out = Path(out_dir)
    _clear_previous_sample(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = (ITALIAN_NAMES if italian else CLASS_NAMES)[:classes]
    seen: set[str] = set()
    for index, folder in enumerate(folders):
        class_dir = out / folder
        class_dir.mkdir()
        rng = np.random.default_rng([seed, index])  # per class: adding classes leaves the others unchanged
        kinds = np.resize(np.array(_KINDS), per_class)[rng.permutation(per_class)]
        for kind in kinds:
            while True:  # re-render on the (astronomically unlikely) byte-identical image
                data, ext = _encode(_render(CLASS_NAMES[index], size, rng), str(kind), rng)
                digest = hashlib.sha1(data).hexdigest()
                if digest not in seen:
                    break
            seen.add(digest)
            (class_dir / f"{_file_stem(rng, digest)}.{ext}").write_bytes(data)
    params = dict(classes=classes, per_class=per_class, size=size, seed=seed, italian=italian,
                  folders=list(folders))
    (out / MARKER).write_text(json.dumps(params, indent=1) + "\n")
    return out


def _clear_previous_sample(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a folder: {out}")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / MARKER
    if not marker.is_file():
        raise UserError(f"output folder is not empty and was not written by make_sample_data: {out} "
                        "(choose a new or empty folder)")
    for folder in json.loads(marker.read_text()).get("folders", []):
        if (out / folder).is_dir() and "/" not in folder and folder not in ("", ".", ".."):
            shutil.rmtree(out / folder)
    marker.unlink()


def _file_stem(rng: np.random.Generator, digest: str) -> str:
    """Names like a scraped set's (`OIP-…`, hex, numbers); the content hash makes them unique."""
    style = rng.integers(3)
    if style == 0:
        return f"OIP-{digest[:22]}"
    if style == 1:
        return digest[:32]
    return str(int(digest[:8], 16))


def _render(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB float image (H, W, 3) in 0..255: noisy background, clutter, the class object, noise."""
    scale = rng.uniform(0.8, 1.6)
    aspect = rng.uniform(0.75, 1.33)
    width, height = int(round(size * scale * np.sqrt(aspect))), int(round(size * scale / np.sqrt(aspect)))
    image = _background(width, height, rng)
    short = min(width, height)
    for _ in range(rng.integers(0, 3)):  # small distractors of any family, behind the object
        shape = SHAPES[rng.integers(len(SHAPES))]
        mask = _mask(shape, width, height, (rng.uniform(0, width), rng.uniform(0, height)),
                     short * rng.uniform(0.05, 0.1), rng.uniform(0, 2 * np.pi), rng)
        image = _paint(image, mask, _texture("plain", _random_colour(rng), width, height, rng))
    shape, hue, sat, val, textures = _SPECS[label]
    if rng.random() < 0.1:
        colour = _random_colour(rng)
    else:
        colour = _hsv(rng.uniform(*hue) % 360, rng.uniform(*sat), rng.uniform(*val))
    radius = short * rng.uniform(0.26, 0.42)
    centre = (width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.7))
    mask = _mask(shape, width, height, centre, radius, rng.uniform(0, 2 * np.pi), rng)
    image = _paint(image, mask, _texture(textures[rng.integers(len(textures))], colour, width, height, rng))
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10))
    return np.clip(image, 0, 255)


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0, 0.6), rng.uniform(0.2, 0.95)), np.float32)
    other = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0, 0.6), rng.uniform(0.2, 0.95)), np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(width, height)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    image = base * (1 - ramp[..., None]) + other * ramp[..., None]
    # blotches: coarse noise upsampled with bilinear interpolation
    coarse = rng.normal(0, rng.uniform(5, 30), (4 + rng.integers(6), 4 + rng.integers(6), 3))
    blotch = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), "F")
                                  .resize((width, height), Image.Resampling.BILINEAR)) for c in range(3)], -1)
    return (image + blotch).astype(np.float32)


def _mask(shape: str, width: int, height: int, centre, radius: float, angle: float,
          rng: np.random.Generator) -> np.ndarray:
    """A float mask in 0..1 of one rotated, scaled shape; drawn at 2x and downsampled for soft edges."""
    k = 2
    canvas = Image.new("L", (width * k, height * k), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = centre[0] * k, centre[1] * k, radius * k
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def place(points) -> list[tuple[float, float]]:
        pts = np.asarray(points, dtype=np.float64) @ rot.T * r + (cx, cy)
        return [tuple(p) for p in pts]

    def ellipse(ax: float, ay: float, ox: float = 0.0, oy: float = 0.0, n: int = 32):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([ox + ax * np.cos(t), oy + ay * np.sin(t)], -1)

    if shape == "ellipse":
        draw.polygon(place(ellipse(1.0, rng.uniform(0.45, 0.65))), fill=255)
    elif shape == "disc":
        draw.polygon(place(ellipse(1.0, rng.uniform(0.85, 1.0))), fill=255)
    elif shape == "trapezoid":
        top = rng.uniform(0.3, 0.6)
        draw.polygon(place([(-1, 0.7), (1, 0.7), (top, -0.7), (-top, -0.7)]), fill=255)
    elif shape == "rectangle":
        h = rng.uniform(0.5, 0.75)
        draw.polygon(place([(-1, -h), (1, -h), (1, h), (-1, h)]), fill=255)
    elif shape == "triangle":
        draw.polygon(place([(0, -1), (0.9, 0.75), (-0.9, 0.75)]), fill=255)
    elif shape == "bowtie":
        w = rng.uniform(0.6, 0.9)
        draw.polygon(place([(0, 0), (-1, -w), (-1, w)]), fill=255)
        draw.polygon(place([(0, 0), (1, -w), (1, w)]), fill=255)
    elif shape == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.35, 0.5))
        draw.polygon(place(np.stack([rad * np.cos(t), rad * np.sin(t)], -1)), fill=255)
    elif shape == "cloud":
        for _ in range(5 + rng.integers(3)):
            ox, oy = rng.uniform(-0.55, 0.55), rng.uniform(-0.35, 0.35)
            draw.polygon(place(ellipse(0.45, 0.45, ox, oy, 20)), fill=255)
    elif shape == "legs":
        draw.polygon(place(ellipse(0.3, 0.3, n=20)), fill=255)
        width_px = max(1, int(round(r * 0.09)))
        for i in range(8):
            a = (i + 0.5) * np.pi / 4 + rng.uniform(-0.15, 0.15)
            bend = a + rng.uniform(-0.4, 0.4)
            draw.line(place([(0, 0), (0.6 * np.cos(a), 0.6 * np.sin(a)), (np.cos(bend), np.sin(bend))]),
                      fill=255, width=width_px)
    elif shape == "crescent":
        draw.polygon(place(ellipse(1.0, 1.0)), fill=255)
        draw.polygon(place(ellipse(0.8, 0.8, rng.uniform(0.35, 0.55), 0.0)), fill=0)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    small = canvas.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


def _texture(kind: str, colour, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    colour = np.array(colour, dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    contrast = np.where(colour.mean() > 110, colour * 0.35, np.minimum(colour * 1.8 + 60, 255))
    if kind == "plain":
        shade = 1 + 0.15 * (xx / width - 0.5) + np.float32(rng.normal(0, 0.04))
        return colour * shade[..., None]
    if kind == "noise":
        return colour + rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(18)
    if kind == "stripes":
        a = rng.uniform(0, np.pi)
        period = max(3.0, min(width, height) * rng.uniform(0.06, 0.14))
        on = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0)[..., None]
        return np.where(on, colour, contrast)
    if kind == "dots":
        period = max(4.0, min(width, height) * rng.uniform(0.08, 0.15))
        ox, oy = rng.uniform(0, period, 2)
        d = ((xx + ox) % period - period / 2) ** 2 + ((yy + oy) % period - period / 2) ** 2
        return np.where((d < (period * 0.28) ** 2)[..., None], contrast, colour)
    if kind == "spots":
        coarse = rng.normal(0, 1, (5 + rng.integers(4), 5 + rng.integers(4))).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.Resampling.BILINEAR))
        return np.where((field > 0.4)[..., None], contrast, colour)
    raise ValueError(kind)  # pragma: no cover


def _paint(image: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> np.ndarray:
    return image * (1 - mask) + texture * mask


def _random_colour(rng: np.random.Generator):
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 1), rng.uniform(0.1, 1))


def _hsv(hue_deg: float, sat: float, val: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(hue_deg / 360.0, sat, val)
    return (r * 255.0, g * 255.0, b * 255.0)


def _encode(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Encode as one of the file kinds of a scraped set; returns (bytes, extension)."""
    rgb = Image.fromarray(image.astype(np.uint8), "RGB")
    if rng.random() < 0.3:
        rgb = rgb.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    buf = io.BytesIO()
    if kind in ("jpg", "jpeg", "JPG"):
        rgb.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        ext = kind
    elif kind == "grey-jpg":
        rgb.convert("L").save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        ext = "jpg"
    elif kind == "grey-png":
        rgb.convert("L").save(buf, "PNG")
        ext = "png"
    elif kind == "palette":
        rgb.quantize(colors=int(rng.choice([32, 64, 256])), method=Image.Quantize.FASTOCTREE).save(buf, "PNG")
        ext = "png"
    elif kind == "rgba":
        # a cut-out: opaque in a random inner box, transparent around it (loaders composite on white)
        w, h = rgb.size
        alpha = Image.new("L", rgb.size, 0)
        x0, y0 = int(w * rng.uniform(0, 0.15)), int(h * rng.uniform(0, 0.15))
        x1, y1 = int(w * rng.uniform(0.85, 1.0)), int(h * rng.uniform(0.85, 1.0))
        ImageDraw.Draw(alpha).rectangle((x0, y0, x1, y1), fill=255)
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        rgba.save(buf, "PNG")
        ext = "png"
    else:
        rgb.save(buf, "PNG")
        ext = "png"
    return buf.getvalue(), ext
