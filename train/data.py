"""MNIST held in memory as whole tensors: batching by indexing is ~10x faster on a CPU than a per-sample
DataLoader, and the whole set is only 47 MB as uint8."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataError(RuntimeError):
    """MNIST could not be found or fetched; the message says what to do."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28], ink bright (as MNIST stores it)
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        """The first n examples (a view, no copy)."""
        return Split(self.images[:n], self.labels[:n])

    def floats(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Images as ToTensor gives them: float32 in [0, 1]."""
        return self.images[index].float().div_(255.0)


def find_raw_folder(data_dir: str | Path) -> Path | None:
    """The folder holding the four IDX files: DIR/MNIST/raw (DIR is torchvision's root), DIR/raw (DIR is
    .../MNIST) or DIR itself; None when none of them holds all four."""
    root = Path(data_dir)
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        if all((folder / name).is_file() for name in RAW_FILES):
            return folder
    return None


def load_mnist(data_dir: str | Path, download: bool = True) -> tuple[Split, Split]:
    """(train, test) from the folder find_raw_folder finds under data_dir; downloaded into data_dir/MNIST/raw
    (torchvision's layout) when there is none and download is allowed."""
    root = Path(data_dir)
    raw = find_raw_folder(root)
    if raw is None:
        if not download:
            raise DataError(
                f"MNIST not found: expected {', '.join(RAW_FILES)} in {root}, {root / 'raw'} or "
                f"{root / 'MNIST' / 'raw'}; point --data-dir at the folder holding them, or drop "
                f"--no-download to fetch it"
            )
        raw = _download(root)
    return _read_split(raw, "train"), _read_split(raw, "t10k")


def _download(root: Path) -> Path:
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    raw = root / "MNIST" / "raw"
    created = next((p for p in reversed((raw, *raw.parents)) if not p.exists()), None)  # topmost new folder
    try:
        MNIST(root=str(root), train=True, download=True)  # fetches all four files
        found = find_raw_folder(root)
        if found is None:
            raise RuntimeError("the download did not produce the four files")
        return found
    except (RuntimeError, OSError) as error:  # torchvision: RuntimeError; network failures: URLError/OSError
        if created is not None:  # leave no empty (or half-filled) folders behind
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(
            f"could not download MNIST into {raw} ({_reason(error)}); if you have the files "
            f"({', '.join(RAW_FILES)}), point --data-dir at the folder that holds them"
        ) from None


def _reason(error: Exception) -> str:
    """The gist of a download error, on one line and cut only between words. torchvision's message lists
    every mirror it tried ('Tried URL, got:' then the error): keep the first error itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    tried = next((i for i, line in enumerate(lines) if line.endswith("got:")), None)
    text = lines[tried + 1] if tried is not None and tried + 1 < len(lines) else " ".join(lines)
    return textwrap.shorten(text or type(error).__name__, 160, placeholder=" ...")


def _read_split(raw: Path, prefix: str) -> Split:
    from torchvision.datasets.mnist import read_image_file, read_label_file  # what torchvision's MNIST reads with

    try:
        images = read_image_file(str(raw / f"{prefix}-images-idx3-ubyte"))
        labels = read_label_file(str(raw / f"{prefix}-labels-idx1-ubyte"))
    except (AssertionError, TypeError, ValueError, RuntimeError, KeyError, OSError) as error:  # some checks are asserts
        raise DataError(f"{raw} does not hold readable MNIST files ({prefix}: {type(error).__name__})") from None
    if images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise DataError(
            f"{raw} does not hold MNIST: {prefix} images are {list(images.shape)}, with {len(labels)} labels"
        )
    return Split(images, labels)
