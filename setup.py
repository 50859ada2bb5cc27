"""Which packages a build contains; everything else is in pyproject.toml. See _build/backend.py: the
runtime wheel holds edge_infer alone, an editable (development) install the training side too."""

import os

from setuptools import setup

RUNTIME = ["edge_infer"]
TRAINING = ["train", "export"]  # need torch / onnx: the [train] extra, used from a source checkout

setup(packages=RUNTIME + (TRAINING if os.environ.get("EDGE_INFER_WITH_TRAINING") == "1" else []))
