"""The `edge-train` and `edge-export` console scripts. They run the training side (train/, export/), which
needs torch and lives in a source checkout; the runtime wheel doesn't ship it. Without it they say so in
one line and exit 2. The runtime itself never imports the training side."""

from __future__ import annotations

import importlib
import importlib.util
import sys

# Top-level modules whose absence means "the training side is not installed".
TRAINING_SIDE = frozenset({"train", "export", "torch", "torchvision", "onnx", "matplotlib"})


def _missing(command: str, name: str | None) -> None:
    print(
        f"{command}: error: the training side is not installed ({name} is missing): install "
        f"edge-infer[train] from a source checkout: pip install -e '.[train]'",
        file=sys.stderr,
    )
    sys.exit(2)


def _run(command: str, module: str) -> None:
    # train/ imports torch lazily (so that --help and an early Ctrl-C are quick): ask for the heavy
    # dependencies up front, without importing them, so that their absence is one line here too.
    for name in ("torch", "onnx"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            _missing(command, name)
    try:
        importlib.import_module(module).main()
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAINING_SIDE:
            raise
        _missing(command, error.name)


def edge_train() -> None:
    _run("edge-train", "train.cli")


def edge_export() -> None:
    _run("edge-export", "export.cli")
