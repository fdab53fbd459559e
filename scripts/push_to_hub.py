#!/usr/bin/env python
"""Push a run (or a study's best run of each family) to the Hugging Face Hub with its model card, in one commit;
or a Gradio Space serving a pushed model (--space USER/NAME --repo-id MODEL); or the exact split as a dataset
(--dataset USER/NAME --splits splits.csv).

Token: HF_TOKEN or `hf auth login`. Offline, without a token or without a network this fails in seconds, before
anything is created on the Hub. --dry-run OUT_DIR writes exactly the folder(s) that would be uploaded instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, hub, hub_extras  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="a finished run folder (train.py --output-dir)")
    what.add_argument("--study", help="a finished study folder: pushes study.json's best run of every family")
    what.add_argument("--space", metavar="USER/NAME", help="a Gradio Space serving the model --repo-id (pushed before)")
    what.add_argument("--dataset", metavar="USER/NAME",
                      help="the split of --splits as a dataset (train/validation/test)")
    p.add_argument("--repo-id", help="USER/NAME: the model repo (with --run, or the model --space serves)")
    p.add_argument("--splits", help="splits.csv of prepare_data.py (with --dataset)")
    p.add_argument("--data-dir", help="its image folder (default: the one recorded in splits.json)")
    p.add_argument("--namespace", help="Hub user or organisation (with --study); repos are NAMESPACE/PREFIXFAMILY")
    p.add_argument("--repo-prefix", default=hub.DEFAULT_REPO_PREFIX,
                   help="repo name prefix with --study (default %(default)s)")
    p.add_argument("--private", action="store_true", help="create the repo(s) private")
    p.add_argument("--dry-run", metavar="OUT_DIR", help="write the upload folder(s) here and send nothing")
    p.add_argument("--dataset-name", help="dataset name shown in the card and its model-index (default: "
                                          "'Animals-10' when the classes are Animals-10's, else the data folder's name)")
    p.add_argument("--dataset-id", help="Hub dataset id for the card's `datasets:` metadata, if the data is on the Hub")
    p.add_argument("--license", help="card license (default: the starting weights' license, else apache-2.0)")
    args = p.parse_args(argv)
    if args.space or args.dataset:
        return push_extra(p, args)
    card = dict(dataset_name=args.dataset_name, dataset_id=args.dataset_id, license=args.license)
    if args.run:
        if not args.repo_id or args.namespace:
            p.error("--run needs --repo-id USER/NAME (and no --namespace)")
        results = [hub.push_run(args.run, args.repo_id, private=args.private, dry_run=args.dry_run, **card)]
    else:
        if not args.namespace or args.repo_id:
            p.error("--study needs --namespace USER (and no --repo-id)")
        results = hub.push_study(args.study, args.namespace, private=args.private, dry_run=args.dry_run,
                                 repo_prefix=args.repo_prefix, **card)
    for r in results:
        if r.url is None:
            files = sorted(f.relative_to(r.folder).as_posix() for f in r.folder.rglob("*") if f.is_file())
            print(f"dry run: {r.repo_id} -> {r.folder} ({len(files)} files: {', '.join(files)})")
        else:
            print(f"pushed {r.folder} -> https://huggingface.co/{r.repo_id}  (commit {r.url})")
    return 0


def push_extra(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--space or --dataset."""
    if args.space:
        if not args.repo_id:
            p.error("--space needs --repo-id USER/NAME: the pushed model the Space serves")
        r = hub_extras.push_space(args.space, args.repo_id, private=args.private, dry_run=args.dry_run,
                                  license=args.license)
        where = f"https://huggingface.co/spaces/{r.repo_id}"
    else:
        if not args.splits:
            p.error("--dataset needs --splits splits.csv")
        r = hub_extras.push_dataset(args.dataset, args.splits, args.data_dir, private=args.private,
                                    dry_run=args.dry_run, license=args.license)
        where = f"https://huggingface.co/datasets/{r.repo_id}"
    if r.url is None:
        files = sorted(f.relative_to(r.folder).as_posix() for f in r.folder.iterdir())
        print(f"dry run: {r.repo_id} -> {r.folder} ({', '.join(files)})")
    else:
        print(f"pushed -> {where}  ({r.url})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
