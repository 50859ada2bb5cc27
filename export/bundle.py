"""Rebuild the models bundled with the runtime, and their provenance, with this project's own commands:

    python -m export.bundle --data-dir ../shared/data

runs edge-train (default recipe) and edge-export exactly as recorded in edge_infer/models/provenance.json,
which also records each model's MNIST test accuracy, size and sha256 (the runtime checks the sha256).
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
from train.trainer import atomic_write

SEED = 0


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
        ["edge-train", "--out", args.run_dir, "--data-dir", args.data_dir, "--seed", str(SEED)],
        ["edge-export", f"{args.run_dir}/checkpoint.pt", "--out", rel(fp32), "--int8", rel(int8),
         "--data-dir", args.data_dir],
    ]
    for command in commands:
        _run(command)

    history = json.loads(Path(args.run_dir, "history.json").read_text())
    models = {}
    for path in (fp32, int8):
        blob = path.read_bytes()
        meta = {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}
        models[path.name] = {"precision": meta["precision"], "sha256": hashlib.sha256(blob).hexdigest(),
                             "bytes": len(blob), "mnist_test_accuracy": float(meta["mnist_test_accuracy"])}
    provenance = {
        "commands": [shlex.join(c) for c in commands],
        "models": models,
        "training": {"epochs": len(history), "seconds": history[-1]["seconds"], "test_acc": history[-1]["test_acc"],
                     "seed": SEED},
        "versions": {"python": platform.python_version(), "torch": version("torch"), "onnx": version("onnx"),
                     "onnxruntime": version("onnxruntime"), "edge-infer": version("edge-infer")},
    }
    text = json.dumps(provenance, indent=2) + "\n"
    atomic_write(MODELS_DIR / PROVENANCE, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
