"""Running an exported `.onnx` classifier with onnxruntime, behind the same `predict.Predictor` as a PyTorch model.

The file is self-describing: `export.py` writes the class names and the preprocessing (input size, mean, std,
interpolation, resize mode) into the ONNX `metadata_props`, so `predict.py` and the app need nothing but the file.
`OnnxClassifier` is a `torch.nn.Module` whose forward runs the ONNX session: wrapped in a `Predictor`, an ONNX
model is decoded, resized and normalised by `preprocess.Preprocessing`, the very code that
serves the PyTorch model, so there is no second preprocessing path that could drift.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from . import data as hfdata
from .errors import UserError
from .preprocess import CROP_MODE, Preprocessing

INPUT_NAME = "pixel_values"  # float32 (batch, 3, size, size), already normalised
OUTPUT_NAME = "logits"  # float32 (batch, classes)
METADATA_PREFIX = "hf_animals."


def is_onnx_file(source: str | os.PathLike) -> bool:
    return str(source).lower().endswith(".onnx")


# ----------------------------------------------------------------------------------------------------------------
# Metadata: what a reader of the file needs besides the graph
# ----------------------------------------------------------------------------------------------------------------
def preprocessing_metadata(class_names: list[str], preprocessing: Preprocessing, **extra) -> dict[str, str]:
    """The metadata_props written into an exported model (values JSON-encoded: ONNX stores strings only)."""
    values = {"class_names": list(class_names), "image_size": preprocessing.image_size,
              "mean": list(preprocessing.mean), "std": list(preprocessing.std),
              "interpolation": preprocessing.interpolation, "resize_mode": CROP_MODE,
              "preprocess_version": hfdata.PREPROCESS_VERSION, "input_name": INPUT_NAME,
              "output_name": OUTPUT_NAME, **extra}
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}


def decode_metadata(props: Mapping[str, str], origin: str) -> dict:
    """{key: value} of the hf_animals metadata (prefix removed), checked for what inference needs."""
    try:
        values = {k[len(METADATA_PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(METADATA_PREFIX)}
    except json.JSONDecodeError as err:
        raise UserError(f"{origin}: unreadable hf_animals metadata ({err})") from None
    missing = [k for k in ("class_names", "image_size", "mean", "std", "interpolation") if k not in values]
    if missing:
        raise UserError(f"{origin} was not exported by hf_animals (scripts/export.py): its metadata lacks "
                        f"{', '.join(missing)}")
    return values


def read_metadata(path: str | os.PathLike) -> dict:
    """The hf_animals metadata of an .onnx file (class names, image size, mean, std, ...)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends: not an ONNX file
        raise UserError(f"cannot read {path} as an ONNX model ({type(err).__name__}: {err})") from None
    return decode_metadata({p.key: p.value for p in model.metadata_props}, str(path))


# ----------------------------------------------------------------------------------------------------------------
# The session, as a torch module
# ----------------------------------------------------------------------------------------------------------------
def ort_session(path: str | os.PathLike, threads: int | None = None):
    """A CPU onnxruntime session; `threads` intra-op threads (default: torch's count, so timings compare)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (InvalidGraph, Fail, ...)
        raise UserError(f"onnxruntime cannot load {path} ({type(err).__name__}: {err})") from None


class OnnxClassifier(torch.nn.Module):
    """forward(normalised float32 images) -> logits, computed by onnxruntime on the CPU.

    `pretrained_cfg` mirrors a timm model's (architecture, label names, preprocessing) so code written for a
    PyTorch model (predict.py's summary line, the app) reads an ONNX model the same way.
    """

    def __init__(self, path: str | os.PathLike, metadata: dict, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.num_classes = len(metadata["class_names"])
        size = int(metadata["image_size"])
        self.pretrained_cfg = {"architecture": f"{metadata.get('architecture', 'model')} (ONNX"
                                               f"{', ' + metadata['precision'] if metadata.get('precision') else ''})",
                               "label_names": list(metadata["class_names"]), "input_size": (3, size, size),
                               "mean": tuple(metadata["mean"]), "std": tuple(metadata["std"]),
                               "interpolation": metadata["interpolation"], "crop_pct": 1.0, "crop_mode": CROP_MODE}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def load_onnx_predictor(path: str | os.PathLike, *, device: str | torch.device | None = None,
                        batch_size: int = 64, threads: int | None = None, tta: bool = False):
    """A `predict.Predictor` whose model is the ONNX file (CPU): same preprocessing, same outputs as PyTorch."""
    from .predict import Predictor

    if device is not None and torch.device(device).type != "cpu":
        raise UserError(f"an ONNX model runs on the CPU here (onnxruntime's CPU build); got --device {device}")
    metadata = read_metadata(path)
    model = OnnxClassifier(path, metadata, threads)
    preprocessing = Preprocessing(metadata["image_size"], metadata["mean"], metadata["std"],
                                  metadata["interpolation"])
    return Predictor(model.eval(), list(metadata["class_names"]), preprocessing, torch.device("cpu"), str(path),
                     batch_size, metadata.get("label_folders"), tta)
