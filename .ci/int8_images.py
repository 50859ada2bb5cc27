"""Real-world digits in MNIST form for the matrix's int8 rows: scikit-learn's UCI handwritten digits (43
writers, through edge_infer's preprocessing as a user's image would go) and MNIST test images.

    python .ci/int8_images.py OUT.npy [UCI_COUNT] [MNIST_COUNT]     (needs scikit-learn; run from the root)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from realworld import uci_writers  # noqa: E402

from edge_infer.preprocess import preprocess  # noqa: E402

out, uci_count, mnist_count = (
    sys.argv[1],
    int(sys.argv[2]) if len(sys.argv) > 2 else 500,
    int(sys.argv[3]) if len(sys.argv) > 3 else 500,
)
uci = [preprocess(blob) for blob, _ in uci_writers()[:uci_count]]
raw = ROOT.parent / "shared" / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
mnist = np.fromfile(raw, np.uint8, offset=16).reshape(-1, 28, 28)[-mnist_count:].astype(np.float32) / 255.0
np.save(out, np.concatenate([np.stack(uci).astype(np.float32), mnist]))
