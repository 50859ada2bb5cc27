"""Model sizes: the fp32 and int8 .onnx files (bundled, and exported from a checkpoint), beside the torch
checkpoint they came from.

    python benchmarks/sizes.py [--checkpoint PATH] [--out bench-out]

Standalone, it reports the models in OUT/models/ if inference.py exported any, the bundled ones, and
--checkpoint if given.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from benchlib import add_common_args, machine_header, section, table

from edge_infer.classifier import bundled_model_path
from train.trainer import load_checkpoint


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def run(models: dict[str, tuple[Path, Path]], checkpoint: Path | None) -> str:
    """models: what -> (fp32 .onnx, int8 .onnx)."""
    rows = []
    for what, (fp32, int8) in models.items():
        a, b = fp32.stat().st_size, int8.stat().st_size
        rows.append([what, f"{a:,}", _kib(a), f"{b:,}", _kib(b), f"{b / a:.2f}"])
    parts = [table(["models", "fp32 bytes", "fp32", "int8 bytes", "int8", "int8 / fp32"], rows)]
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        buffer = io.BytesIO()
        torch.save(state["model"], buffer)
        weights = sum(t.numel() * t.element_size() for t in state["model"].values())
        fp32 = next(iter(models.values()))[0].stat().st_size if models else None
        rows = [
            [what, f"{n:,}", f"{n / fp32:.2f}" if fp32 else ""]
            for what, n in (
                ("checkpoint file (weights + optimizer/scheduler state)", checkpoint.stat().st_size),
                ("its state_dict alone, torch.save'd", len(buffer.getvalue())),
                ("raw weight bytes (sum of numel x element size)", weights),
            )
        ]
        parts.append(
            f"Torch, for comparison (`{checkpoint}`):\n\n"
            + table(["", "bytes", "vs the fp32 .onnx of the first row above"], rows)
        )
    return section("5. Model sizes", *parts)


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--checkpoint", type=Path, default=None, help="an edge-train checkpoint to compare with")
    args = parser.parse_args()
    models = {}
    exported = tuple(args.out / "models" / bundled_model_path(int8).name for int8 in (False, True))
    if all(p.exists() for p in exported):
        models[f"exported to {exported[0].parent}"] = exported
    models["bundled (edge_infer/models/)"] = (bundled_model_path(False), bundled_model_path(True))
    print(machine_header("edge-infer model sizes", args.quick) + "\n" + run(models, args.checkpoint))


if __name__ == "__main__":
    main()
