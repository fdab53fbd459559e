#!/usr/bin/env python
"""Predict a folder of images with a saved model and write a Kaggle submission CSV.

--model: a run folder, a folder saved by this project, hf-hub:USER/NAME, or a .onnx file from scripts/export.py;
classes and preprocessing come from its config.json (or the .onnx file's metadata). Default output: header ID,Label,
ids = file names without extension in numeric order (2 before 10), labels = the class folder names of the training
data (cane, cavallo, ... for Animals-10). --sample-submission copies a given header and order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, precision, predict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="run folder, saved-model folder, local-dir:DIR, hf-hub:USER/NAME or an exported .onnx file")
    p.add_argument("--images", required=True, help="folder of images (searched recursively; other files ignored)")
    p.add_argument("--output", default="submission.csv", help="CSV to write (default %(default)s)")
    p.add_argument("--label-language", choices=predict.LABEL_LANGUAGES, default=predict.DEFAULT_LABEL_LANGUAGE,
                   help="folder: the class folder names of the training data, exactly (cane, ... for Animals-10); "
                        "it: Animals-10's Italian names; en: English class names; index: class number "
                        "(default %(default)s)")
    p.add_argument("--id-column", help=f"id column name (default {predict.DEFAULT_ID_COLUMN}, or the sample's first)")
    p.add_argument("--label-column",
                   help=f"label column name (default {predict.DEFAULT_LABEL_COLUMN}, or the sample's second)")
    p.add_argument("--id-from", choices=predict.ID_SOURCES,
                   help="id of an image: stem ('10' for 10.jpg, default), name ('10.jpg') or relpath; "
                        "with --sample-submission the one matching its ids")
    p.add_argument("--sample-submission", help="CSV whose header and id order are copied exactly")
    p.add_argument("--probabilities", action="store_true", help="add one prob_<label> column per class")
    p.add_argument("--batch-size", type=cli.positive_int, default=64)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the GPU when there is one)")
    p.add_argument("--num-workers", type=cli.non_negative_int, default=0, help="image decoding processes")
    p.add_argument("--mixed-precision", choices=precision.CHOICES, default="auto",
                   help="inference autocast; auto: bf16 where the CPU/GPU has it natively (default %(default)s)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the probabilities of each image and its mirror image")
    args = p.parse_args(argv)
    r = predict.predict_to_csv(args.model, args.images, args.output, label_language=args.label_language,
                               id_column=args.id_column, label_column=args.label_column, id_from=args.id_from,
                               sample_submission=args.sample_submission, probabilities=args.probabilities,
                               batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                               mixed_precision=args.mixed_precision, tta=args.tta)
    pr = r.predictor
    print(f"model {pr.source}: {pr.model.pretrained_cfg.get('architecture')}, {len(pr.class_names)} classes, "
          f"{pr.image_size} px, on {pr.device}, mixed precision {pr.precision}"
          + (", TTA: image + mirror image" if pr.tta else ""))
    print(f"{len(r.prediction.paths)} images predicted; {len(r.prediction.ignored)} non-image file(s) ignored")
    for path, err in r.prediction.unreadable:
        print(f"warning: unreadable, no row written: {err}", file=sys.stderr)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.submission.label_counts.items()))
    print(f"wrote {r.output}: {len(r.submission.rows)} rows, columns {','.join(r.submission.header)}, "
          f"ids from file {r.submission.id_from}; labels: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
