"""Rebuild the models bundled with the runtime, and their provenance, with this project's own commands:

    python -m export.bundle --data-dir ../shared/data

runs edge-train (default recipe, GRU-128) and edge-export exactly as recorded in edge_infer/models/provenance.json,
which also records each model's MNIST test accuracy, size and sha256 (the runtime checks the sha256), the
training run's outcome and the versions used.

provenance.json holds only what the rebuild determines, so that rebuilding from unchanged code and versions
(seeded, deterministic CPU training) leaves the committed tree unchanged: how long training took depends on
the machine and its load, so it stays in the run directory (RUN_DIR/history.json) and is printed, not
committed. The file is rewritten only when its content changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import onnx

from edge_infer.classifier import BUNDLED, MODELS_DIR, PROVENANCE
from export.int8_exact import cpu_kind
from train import DEFAULT_THREADS
from train.files import atomic_write
from train.trainer import load_checkpoint

SEED = 0
# The bundled cell is chosen by real-world accuracy (benchmarks/realworld.py): a GRU-128 with the default
# recipe reads other writers, pens and scanners far better than the seed's ReLU RNN at a small run-time cost.
CELL = "gru"
# Pinned in the command, not left to the default: the trained weights depend on the thread count, and the
# bundle must come out byte for byte the same on any machine of the same CPU kind. (Across kinds torch's
# float kernels differ, so the trained weights differ in their last bits; provenance records the kind.)
THREADS = DEFAULT_THREADS


def _run(command: list[str]) -> None:
    """Run a console-script command (edge-train ...) as `python -m <package>` of this interpreter."""
    module = {"edge-train": "train", "edge-export": "export"}[command[0]]
    print("$", shlex.join(command), flush=True)
    subprocess.run([sys.executable, "-m", module, *command[1:]], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild edge_infer/models/ from scratch.")
    parser.add_argument("--data-dir", default="data", help="MNIST root (torchvision layout), as for edge-train")
    parser.add_argument("--run-dir", default="runs/bundled", help="where the training run goes")
    args = parser.parse_args()
    if Path(args.run_dir, "checkpoint.pt").exists():
        sys.exit(f"error: {args.run_dir} already holds a run; remove it or pass another --run-dir")

    fp32, int8 = (MODELS_DIR / BUNDLED[False]), (MODELS_DIR / BUNDLED[True])
    rel = lambda p: str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)  # noqa: E731
    commands = [
        [
            "edge-train",
            "--cell",
            CELL,
            "--out",
            args.run_dir,
            "--data-dir",
            args.data_dir,
            "--seed",
            str(SEED),
            "--threads",
            str(THREADS),
        ],
        [
            "edge-export",
            f"{args.run_dir}/checkpoint.pt",
            "--out",
            rel(fp32),
            "--int8",
            rel(int8),
            "--data-dir",
            args.data_dir,
        ],
    ]
    for command in commands:
        _run(command)

    history = json.loads(Path(args.run_dir, "history.json").read_text())
    models = {}
    for path in (fp32, int8):
        blob = path.read_bytes()
        meta = {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}
        models[path.name] = {
            "precision": meta["precision"],
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "mnist_test_accuracy": float(meta["mnist_test_accuracy"]),
        }
    provenance = {
        "commands": [shlex.join(c) for c in commands],
        "models": models,
        "training": {
            "epochs": len(history),
            "test_acc": history[-1]["test_acc"],
            "seed": SEED,
            "threads": load_checkpoint(Path(args.run_dir, "checkpoint.pt"))["threads"],
            "cpu": cpu_kind(),  # the instruction sets the weights were trained and checked with
        },
        "versions": {
            "python": platform.python_version(),
            "torch": version("torch"),
            "onnx": version("onnx"),
            "onnxruntime": version("onnxruntime"),
            "edge-infer": version("edge-infer"),
        },
    }
    text = json.dumps(provenance, indent=2) + "\n"
    path = MODELS_DIR / PROVENANCE
    unchanged = path.is_file() and path.read_text() == text
    if not unchanged:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    print(text)
    print(
        f"{path}: {'unchanged' if unchanged else 'updated'}; training took {history[-1]['seconds']:.1f} s on "
        f"this machine (see {args.run_dir}/history.json)"
    )


if __name__ == "__main__":
    main()
