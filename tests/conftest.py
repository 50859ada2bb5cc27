"""Shared fixtures: real MNIST from ../shared/data, and small models trained once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real MNIST (torchvision layout: DATA_ROOT/MNIST/raw/*-ubyte), beside the project as in CI.
DATA_ROOT = Path(os.environ.get("EDGE_INFER_DATA", ROOT.parent / "shared" / "data"))


def _require_mnist() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        message = f"real MNIST not found under {DATA_ROOT} (set EDGE_INFER_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must never pass by skipping the real-data tests
        pytest.skip(message)
    return DATA_ROOT


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _require_mnist()


def read_idx(raw: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST straight from the IDX files (no torchvision: the runtime side must not need it)."""
    images = np.fromfile(raw / f"{split}-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.fromfile(raw / f"{split}-labels-idx1-ubyte", np.uint8, offset=8).astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def mnist_test(data_root) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8 [N, 28, 28]) and labels, as numpy arrays."""
    return read_idx(data_root / "MNIST" / "raw", "t10k")


@pytest.fixture(scope="session")
def mnist(data_root):
    """(train, test) Splits: uint8 image tensors + labels."""
    torch = pytest.importorskip("torch")
    from train.data import load_mnist

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return load_mnist(data_root, download=False)


def train_small(run_dir: Path, mnist, cell: str = "rnn", hidden: int = 32, layers: int = 1, images: int = 3000,
                epochs: int = 1, seed: int = 0):
    """A small model trained in-process with the default recipe on the first `images` training images."""
    from dataclasses import replace

    from train.model import ModelConfig
    from train.trainer import PRESETS, Trainer

    train, test = mnist
    subset = train.head(images)
    # the synthetic pool and calibration are tested on their own (test_realworld.py); here they'd only cost time
    recipe = replace(PRESETS["default"], epochs=epochs, augment=False, synthetic=0.0, calibration_images=0)
    trainer = Trainer(run_dir, ModelConfig(cell, hidden, layers), recipe, subset, test, seed=seed, progress_bar=False)
    trainer.fit()
    return trainer


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory, mnist) -> dict[str, Path]:
    """One small trained checkpoint per cell (rnn has the seed's width so int8 is measured on a real model)."""
    out = {}
    for cell, hidden, images, epochs in (("rnn", 128, 12000, 2), ("gru", 24, 2000, 1), ("lstm", 24, 2000, 1)):
        run = tmp_path_factory.mktemp(f"ckpt-{cell}")
        train_small(run, mnist, cell=cell, hidden=hidden, images=images, epochs=epochs)
        out[cell] = run / "checkpoint.pt"
    return out
