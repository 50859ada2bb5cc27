"""Regenerate the pictures the README shows (committed in docs/; this script is their provenance):

    python examples/make_pictures.py [--out docs]

docs/graph.svg          the bundled fp32 model's graph, as `edge-infer --info --graph docs/graph.svg` draws it
docs/graph-int8.svg     the bundled int8 model's graph (`edge-infer --int8 --info --graph ...`)
docs/photo-4-input.png  what the model saw in examples/photo-4.png, as `edge-infer --save-input docs ...` draws it

Runtime only (edge_infer): no torch or onnx needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_infer import Classifier, explain
from edge_infer.classifier import bundled_model_path
from edge_infer.draw_graph import draw, summarize
from edge_infer.onnx_graph import read_model

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "photo-4.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for int8, name in ((False, "graph.svg"), (True, "graph-int8.svg")):
        draw(summarize(read_model(bundled_model_path(int8).read_bytes())), args.out / name)
    explain(EXAMPLE, Classifier()).save(args.out / f"{EXAMPLE.stem}-input.png", format="PNG")
    for path in sorted(args.out.iterdir()):
        print(path)


if __name__ == "__main__":
    main()
