#!/usr/bin/env python
"""Measure the training-recipe ingredients on a real image folder (see hf_animals/recipe_bench.py).

    python scripts/fetch_real_data.py data/fashion_mnist
    python scripts/recipe_bench.py data/fashion_mnist --work-dir runs/recipe --size 64 --seeds 0 1 \
        --experiments plain_cnn cnn_adamw_aug_ema_ls_zero lite0_head_zero_init

Appends one JSON line per (experiment, seed) to WORK_DIR/results.jsonl and prints a one-line summary of each.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli  # noqa: E402
from hf_animals import recipe_bench as rb  # noqa: E402
from hf_animals.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("--work-dir", required=True, help="split, results.jsonl and lr-probe figures go here")
    p.add_argument("--size", type=cli.positive_int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=cli.positive_int, default=None, help="override every experiment's epochs")
    p.add_argument("--experiments", nargs="+", default=list(rb.EXPERIMENTS) + ["linear_probe"],
                   help=f"any of: {', '.join(rb.EXPERIMENTS)}, linear_probe")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    unknown = [e for e in args.experiments if e not in rb.EXPERIMENTS and e != "linear_probe"]
    if unknown:
        raise UserError(f"unknown experiment(s) {', '.join(unknown)}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    split = rb.load_split_arrays(args.data_dir, str(work), args.size)
    for name in args.experiments:
        for seed in args.seeds:
            if name == "linear_probe":
                result = rb.linear_probe(split, epochs=args.epochs or 3, seed=seed)
            else:
                r = rb.EXPERIMENTS[name]
                result = rb.run_recipe(replace(r, epochs=args.epochs or r.epochs), split, seed=seed)
            result.update(name=name, size=args.size, data=str(args.data_dir))
            if "probe" in result:
                from hf_animals.plots import plot_lr_probe
                pr = result["probe"]
                plot_lr_probe(pr["lrs"], pr["losses"], pr["smoothed"], pr["chosen_lr"],
                              work / f"lr_probe_{name}_s{seed}.png", title=f"{name} seed {seed}")
            with open(work / "results.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"{name:32s} seed {seed}: test {result['test']:.3f}"
                  + (f" tta {result['test_tta']:.3f}" if "test_tta" in result else "")
                  + f" val {result['best_val']:.3f} epoch {result['best_epoch']}"
                  + (f" ({result['best_weights']})" if "best_weights" in result else "")
                  + (f" start_loss {result['start_loss']:.2f} lr {result['lr_used']:.2g}" if "start_loss" in result
                     else "") + (f" {result['time_s']:.0f}s" if "time_s" in result else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
