"""The preprocessing: RGB decoding, the resize, normalisation, and the record saved with the model."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hf_animals import preprocess
from hf_animals.errors import UserError


def _encoded(image: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


def test_every_mode_becomes_rgb():
    red = Image.new("RGB", (10, 6), (255, 0, 0))
    clear = Image.new("RGBA", (10, 6), (0, 0, 0, 0))
    grey16 = Image.fromarray(np.full((6, 10), 65535, dtype=np.uint16))
    palette = red.quantize(4)
    palette.info["transparency"] = 0
    cases = {
        "RGB": (red, (255, 0, 0)), "L": (red.convert("L"), None), "1": (red.convert("1"), None),
        "CMYK": (_encoded(red.convert("CMYK"), "JPEG"), None), "P": (red.quantize(4), (255, 0, 0)),
        "P+transparency": (palette, (255, 255, 255)), "RGBA clear": (clear, (255, 255, 255)),
        "LA clear": (clear.convert("LA"), (255, 255, 255)), "I;16 white": (grey16, (255, 255, 255)),
        "I": (Image.fromarray(np.full((6, 10), 1000, np.int32)), (4, 4, 4)),
    }
    for name, (image, colour) in cases.items():
        out = preprocess.rgb_resized(image, 8)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8, name
        if colour is not None:
            assert np.abs(out.astype(int) - colour).max() <= 2, (name, out[0, 0])


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    rotated = _encoded(image, "JPEG", exif=exif)
    assert preprocess.rgb_image(rotated).size == (10, 20)


def test_load_rgb_resized_names_bad_files(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(UserError, match="cannot read image .*bad.jpg"):
        preprocess.load_rgb_resized(bad, 8)
    with pytest.raises(UserError, match="image not found"):
        preprocess.load_rgb_resized(tmp_path / "none.jpg", 8)


def test_normalize_batch():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2).contiguous()
    out = preprocess.normalize_batch(x.unsqueeze(0), mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 1.0])
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 2)
    assert torch.allclose(out[0, :, 0, :], torch.tensor([[-1.0, 1.0], [-2.0, 2.0], [-0.5, 0.5]]))
    with pytest.raises(TypeError):
        preprocess.normalize_batch(x.float(), [0.5] * 3, [0.5] * 3)




# ------------------------------------------------------------------------------------------------ the record

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_preprocessing_round_trips_through_pretrained_cfg():
    p = preprocess.Preprocessing(48, MEAN, STD, "bicubic")
    cfg = p.to_pretrained_cfg()
    assert cfg["input_size"] == (3, 48, 48) and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash"
    assert preprocess.Preprocessing.from_pretrained_cfg(cfg) == p
    with pytest.raises(UserError, match="not a square"):
        preprocess.Preprocessing.from_pretrained_cfg({**cfg, "input_size": (3, 48, 64)})


def test_from_model_uses_the_weights_normalisation_and_the_project_resize():
    from hf_animals.models import create_model

    lite0 = create_model("tf_efficientnet_lite0", 10, pretrained=False)  # TF weights: bicubic, mean 127/255
    p = preprocess.Preprocessing.from_model(lite0, 64)
    assert p.image_size == 64 and p.interpolation == preprocess.INTERPOLATION
    assert p.mean == pytest.approx((127 / 255,) * 3) and p.std == pytest.approx((128 / 255,) * 3)
    assert preprocess.Preprocessing.from_model(lite0).image_size == 224


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_our_resize_is_timms_squash_transform(interpolation):
    """What a plain timm user runs on a saved model's pretrained_cfg gives the pixels predict.py feeds it."""
    from timm.data import create_transform, resolve_data_config

    p = preprocess.Preprocessing(32, MEAN, STD, interpolation)
    timm_transform = create_transform(**resolve_data_config({}, pretrained_cfg=p.to_pretrained_cfg()))
    rng = np.random.default_rng(0)
    for size in ((80, 50), (50, 80), (32, 32), (20, 31)):  # wide, tall, already square, upscaled
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
        ours = p.normalize(torch.from_numpy(preprocess.rgb_resized(image, 32, interpolation)).permute(2, 0, 1))
        theirs = timm_transform(image)
        assert theirs.shape == ours.shape == (3, 32, 32)
        assert torch.allclose(ours, theirs, atol=1e-5), (size, (ours - theirs).abs().max())
