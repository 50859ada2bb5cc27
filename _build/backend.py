"""The build backend: setuptools' own, with one difference (the `packages` list in setup.py).

A regular wheel (`pip install edge-infer`, `pip install .`) ships the runtime alone: the `edge_infer`
package, nothing that needs torch, and no top-level `train` or `export` modules to collide with a user's
own. An editable install (`pip install -e ".[train,dev]"`, the development set-up) also maps `train/` and
`export/`, the training side, which is used from a source checkout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403  (every hook not wrapped below, unchanged)

WITH_TRAINING = "EDGE_INFER_WITH_TRAINING"  # read by setup.py


def _with_training(hook: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        os.environ[WITH_TRAINING] = "1"
        try:
            return hook(*args, **kwargs)
        finally:
            del os.environ[WITH_TRAINING]

    return wrapped


get_requires_for_build_editable = _with_training(build_meta.get_requires_for_build_editable)
prepare_metadata_for_build_editable = _with_training(build_meta.prepare_metadata_for_build_editable)
build_editable = _with_training(build_meta.build_editable)
