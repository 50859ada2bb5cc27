"""All the benchmarks, one markdown report on stdout (progress notes go to stderr):

    python benchmarks/run.py [--data-dir ../shared/data] [--out bench-out] [--quick] [--training]
                             [--checkpoint runs/bundled/checkpoint.pt]

Sections: 1 inference (torch vs onnxruntime fp32/int8), 2 CLI cold start, 3 bulk, 4 training (only with
--training: it runs three edge-train recipes, ~10 minutes, unless OUT already holds their histories),
5 model sizes. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from benchlib import add_common_args, machine_header

import bulk
import cold_start
import inference
import photo
import sizes
import training
from edge_infer.classifier import bundled_model_path


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="edge-train checkpoint for the inference section (default: runs/bundled/checkpoint.pt, "
                             "else OUT/train-default, trained if missing)")
    parser.add_argument("--training", action="store_true",
                        help="include the training section (trains into OUT/train-* unless already there)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    header = machine_header("edge-infer benchmarks", args.quick)  # before anything loads the machine
    progress("1. inference")
    body, models = inference.run(args.checkpoint, args.out, args.data_dir, args.quick)
    sections = [body]
    progress("2. CLI cold start")
    sections.append(cold_start.run(args.quick))
    progress("3. bulk")
    sections.append(bulk.run(args.data_dir, args.out))
    sections.append(photo.run(args.data_dir, args.out, args.quick))
    if args.training:
        progress("4. training")
        sections.append(training.run(args.out, args.data_dir))
    else:
        sections.append("## 4. Training\n\nNot run: add `--training` (see benchmarks/README.md).\n")
    progress("5. model sizes")
    sections.append(sizes.run({f"exported from `{models.checkpoint}` (section 1)": (models.fp32, models.int8),
                               "bundled (edge_infer/models/)": (bundled_model_path(False), bundled_model_path(True))},
                              models.checkpoint))
    progress("done")

    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    print(header + f"\nCommand: `{command}`; took {time.perf_counter() - started:.0f} s.\n")
    print("\n".join(sections))


if __name__ == "__main__":
    main()
