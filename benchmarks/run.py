"""All the benchmarks, one markdown report, written to benchmarks/RESULTS.md and printed (progress notes go
to stderr):

    python benchmarks/run.py [--data-dir ../shared/data] [--out bench-out] [--quick] [--training]
                             [--checkpoint runs/bundled/checkpoint.pt] [--results benchmarks/RESULTS.md]

The report starts with the machine, the versions and the commit, then every table. README.md quotes no
numbers from it, only the targets and where each stands; RESULTS.md is the record.

Sections: 1 inference (torch vs onnxruntime fp32/int8), 1b thread policy (idle and busy), 2 CLI cold start,
3 bulk, 4 training (only with --training: it runs three edge-train recipes, ~10 minutes, unless OUT already
holds their histories), 5 model sizes, 6 whole numbers, 7 serve (`edge-infer serve` under load; needs the
serve extra). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import bulk
import cold_start
import inference
import photo
import serve
import sizes
import threads
import training
import whole_numbers
from benchlib import ROOT, add_common_args, machine_header

from edge_infer.classifier import bundled_model_path
from tests.serving import missing_serve_parts
from train.files import atomic_write

RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="edge-train checkpoint for the inference section (default: runs/bundled/checkpoint.pt, "
        "else OUT/train-default, trained if missing)",
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="include the training section (trains into OUT/train-* unless already there)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where to write the report (default benchmarks/RESULTS.md); '-': stdout only",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    header = machine_header("edge-infer benchmarks", args.quick)  # before anything loads the machine
    progress("1. inference")
    body, models = inference.run(args.checkpoint, args.out, args.data_dir, args.quick)
    sections = [body]
    progress("1b. thread policy")
    sections.append(threads.run(args.data_dir, args.quick))
    progress("2. CLI cold start")
    sections.append(cold_start.run(args.quick))
    progress("3. bulk")
    sections.append(bulk.run(args.data_dir, args.out, args.quick))
    sections.append(photo.run(args.data_dir, args.out, args.quick))
    if args.training:
        progress("4. training")
        sections.append(training.run(args.out, args.data_dir))
    else:
        sections.append("## 4. Training\n\nNot run: add `--training` (see benchmarks/README.md).\n")
    progress("5. model sizes")
    sections.append(
        sizes.run(
            {
                f"exported from `{models.checkpoint}` (section 1)": (models.fp32, models.int8),
                "bundled (edge_infer/models/)": (bundled_model_path(False), bundled_model_path(True)),
            },
            models.checkpoint,
        )
    )
    progress("6. whole numbers")
    sections.append(whole_numbers.run(args.data_dir, args.quick))
    progress("7. serve")
    missing = missing_serve_parts()
    sections.append(f"## 7. Serve\n\nNot run: {missing}.\n" if missing else serve.run(args.data_dir, args.quick))
    progress("done")

    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    report = header + f"\nCommand: `{command}`; took {time.perf_counter() - started:.0f} s.\n\n" + "\n".join(sections)
    print(report)
    if str(args.results) != "-":
        atomic_write(args.results, lambda tmp: Path(tmp).write_text(report))
        print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
