"""Rebuild the models bundled with the runtime, and their provenance, with this project's own commands:

    python -m export.bundle --data-dir ../shared/data

runs edge-train (default recipe, GRU-128) and edge-export exactly as recorded in edge_infer/models/provenance.json,
which also records each model's MNIST test accuracy, size and sha256 (the runtime checks the sha256), the
training run's outcome and recipe, the training data with their licences and attributions (MNIST and UNIPEN
from --data-dir, which must hold MNIST and unipen/unipen-1a-digits.npz), and the versions used.

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
from train.unipen import ATTRIBUTION, unipen_path, writer_roles

SEED = 0
# The bundled cell is chosen by real-world accuracy (benchmarks/realworld.py): a GRU-128 with the default
# recipe reads other writers, pens and scanners far better than the seed's ReLU RNN at a small run-time cost.
CELL = "gru"
# Pinned in the command, not left to the default: the trained weights depend on the thread count, and the
# bundle must come out byte for byte the same on any machine of the same CPU kind. (Across kinds torch's
# float kernels differ, so the trained weights differ in their last bits; provenance records the kind.)
THREADS = DEFAULT_THREADS


def training_sources(recipe: dict, data_dir: str, train_size: int) -> list[dict]:
    """What the bundled model was trained on (recipe and MNIST training images of its checkpoint), with
    licences and attributions, for its provenance."""
    holdout = min(recipe["calibration_images"], train_size // 10)
    sources = [
        {
            "name": "MNIST",
            "licence": "CC BY-SA 3.0",
            "attribution": "Yann LeCun, Corinna Cortes, Christopher J. C. Burges: the MNIST database of "
            "handwritten digits (torchvision's mirror)",
            "used": f"{train_size - holdout:,} training images; {holdout:,} more held out for calibration",
        }
    ]
    if recipe.get("synthetic", 0) > 0:
        sources.append(
            {
                "name": "synthetic digits (train/synth.py)",
                "licence": "this project's own; printed digits drawn with matplotlib's STIX (SIL OFL 1.1) and "
                "Computer Modern (BaKoMa fonts licence) fonts",
                "used": f"{recipe['synthetic']:g} per MNIST training image: degraded MNIST, pen-stroke templates "
                "(continental styles), printed",
            }
        )
    if recipe.get("unipen", 0) > 0:
        import numpy as np

        roles = writer_roles(np.load(unipen_path(data_dir))["writer"])
        count = {role: sum(1 for r in roles.values() if r == role) for role in ("train", "calibration", "held-out")}
        sources.append(
            {
                "name": "UNIPEN 1a isolated digits (train_r01_v07)",
                "licence": "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
                "attribution": ATTRIBUTION,
                "used": f"pen trajectories of {count['train']} writers, each digit rendered {recipe['unipen']:g} "
                f"times (train/unipen.py); {count['calibration']} writers for calibration only, "
                f"{count['held-out']} writers held out (never trained on)",
            }
        )
    return sources


def _run(command: list[str]) -> None:
    """Run a console-script command (edge-train ...) as `python -m <package>` of this interpreter."""
    module = {"edge-train": "train", "edge-export": "export"}[command[0]]
    print("$", shlex.join(command), flush=True)
    subprocess.run([sys.executable, "-m", module, *command[1:]], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild edge_infer/models/ from scratch.")
    parser.add_argument(
        "--data-dir", default="data", help="MNIST root (torchvision layout) holding unipen/ too, as for edge-train"
    )
    parser.add_argument("--run-dir", default="runs/bundled", help="where the training run goes")
    args = parser.parse_args()
    if Path(args.run_dir, "checkpoint.pt").exists():
        sys.exit(f"error: {args.run_dir} already holds a run; remove it or pass another --run-dir")
    if not unipen_path(args.data_dir).is_file():  # the default recipe draws UNIPEN digits: say so before MNIST work
        sys.exit(
            f"error: UNIPEN not found: expected {unipen_path(args.data_dir)}; point --data-dir at the folder "
            "holding MNIST and unipen/"
        )

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
    checkpoint = load_checkpoint(Path(args.run_dir, "checkpoint.pt"))
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
            "threads": checkpoint["threads"],
            "recipe": checkpoint["recipe"],
            "cpu": cpu_kind(),  # the instruction sets the weights were trained and checked with
        },
        "training_data": training_sources(checkpoint["recipe"], args.data_dir, checkpoint["train_size"]),
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
