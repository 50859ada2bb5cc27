"""Shared fixtures: real MNIST from ../shared/data, one reference training run, and small models trained
once per test session.

`pytest -m "not slow"` is the inner loop: it leaves out the tests marked slow (those that train, export or
run the CLI over thousands of images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# One torch / OpenMP thread per process, set before anything imports torch (subprocesses inherit it): the
# tests' models are tiny, and a thread pool per process oversubscribes a machine that runs other jobs.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

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

    torch.set_num_threads(1)
    return load_mnist(data_root, download=False)


# Training runs shared by the whole session, made by edge-train in-process as a user runs it (default
# recipe, real MNIST subsets). Read them, don't write to them (copy what a test changes).
# The reference run: hidden 128 is the seed's width, so the export tests measure int8 on a real model.
REFERENCE_ARGS = ("--limit-train", "12000", "--epochs", "3", "--hidden", "128", "--seed", "7")
# A tiny run for the tests that repeat a run to compare histories (same seed, Ctrl-C and resume): a
# repeat of it costs a second, where one of the reference run costs ten.
SMALL_RUN_ARGS = ("--limit-train", "3000", "--epochs", "5", "--hidden", "16", "--seed", "7")


def edge_train_run(args: tuple[str, ...], out: Path, data_root: Path) -> Path:
    from click.testing import CliRunner

    from train.cli import main as edge_train

    result = CliRunner().invoke(
        edge_train,
        [*args, "--data-dir", str(data_root), "--no-download", "--out", str(out), "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, data_root, mnist) -> Path:
    """The run directory of `edge-train REFERENCE_ARGS`."""
    return edge_train_run(REFERENCE_ARGS, tmp_path_factory.mktemp("reference") / "run", data_root)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, data_root, mnist) -> Path:
    """The run directory of `edge-train SMALL_RUN_ARGS`."""
    return edge_train_run(SMALL_RUN_ARGS, tmp_path_factory.mktemp("small") / "run", data_root)


def train_small(
    run_dir: Path,
    mnist,
    cell: str = "rnn",
    hidden: int = 32,
    layers: int = 1,
    images: int = 3000,
    epochs: int = 1,
    seed: int = 0,
):
    """A small model trained in-process with the default recipe on the first `images` training images."""
    from dataclasses import replace

    from train.model import ModelConfig
    from train.trainer import PRESETS, Trainer

    train, test = mnist
    subset = train.head(images)
    # the synthetic pool and calibration are tested on their own (test_realworld.py); here they'd only cost time
    recipe = replace(PRESETS["default"], epochs=epochs, augment=False, synthetic=0.0, calibration_images=0, unipen=0.0)
    trainer = Trainer(run_dir, ModelConfig(cell, hidden, layers), recipe, subset, test, seed=seed, progress_bar=False)
    trainer.fit()
    return trainer


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory, mnist, reference_run) -> dict[str, Path]:
    """One trained checkpoint per cell: rnn is the reference run's; gru and lstm are small ones."""
    out = {"rnn": reference_run / "checkpoint.pt"}
    for cell, hidden, images, epochs in (("gru", 24, 2000, 1), ("lstm", 24, 2000, 1)):
        run = tmp_path_factory.mktemp(f"ckpt-{cell}")
        train_small(run, mnist, cell=cell, hidden=hidden, images=images, epochs=epochs)
        out[cell] = run / "checkpoint.pt"
    return out


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory) -> Path:
    """A decompression bomb: a 20000x20000 1-bit PNG, a few kB on disk, 400 megapixels when decoded."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    return path


def copy_file(source: Path, folder: Path, name: str | None = None) -> Path:
    """source copied into folder (as name): for tests that must not touch a shared fixture's file."""
    return Path(shutil.copy(source, folder / (name or source.name)))


def obey_permission_bits() -> None:
    """A subprocess's preexec_fn: root reads and writes anywhere; drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    from the bounding set, so that after exec the child's root obeys permission bits like anyone (prctl
    PR_CAPBSET_DROP = 24; the capabilities are 1 and 2). Nothing to do for other users."""
    import ctypes

    if os.geteuid() != 0:
        return
    for capability in (1, 2):
        if ctypes.CDLL(None, use_errno=True).prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability})")
