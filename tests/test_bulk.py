"""Bulk classification of real image files: the CLI's worker processes keep every answer and its order, and
Ray Data's DigitReader (edge_infer.ray) on a local 2-CPU Ray cluster answers exactly what the CLI answers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from .test_runtime import cli

COUNT = 2000  # real MNIST test digits written as PNG files


def _require_ray() -> Any:
    """ray, or a skip where it isn't installed; CI (CI=true) installs edge-infer[ray], so there it fails."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        message = 'ray is not installed: pip install -e ".[ray]"'
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must never pass by skipping the Ray test
        pytest.skip(message)
    return ray


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory, mnist_test) -> Path:
    """COUNT MNIST test digits as PNGs named INDEX-LABEL.png, plus a file that is not an image and a truncated
    PNG in the middle (their error records must come back in their places)."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = mnist_test
    for i in range(COUNT):
        Image.fromarray(images[i]).save(folder / f"{i:05d}-{labels[i]}.png", compress_level=1)
    (folder / "00700-bad.png").write_text("not a png")
    (folder / "01300-cut.png").write_bytes((folder / f"01300-{labels[1300]}.png").read_bytes()[:60])
    return folder


def cli_records(folder: Path, *args: str) -> list[dict]:
    result = cli("--json", *args, str(folder))
    assert result.returncode == 1, result.stderr  # 1: the two broken files
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


@pytest.mark.slow
def test_cli_worker_processes_keep_every_answer_in_order(digit_folder):
    """Two worker processes reading, the model in the parent: the same records, in the same order, as one
    process; the broken files' errors in their places; MNIST accuracy as expected."""
    parallel, single = cli_records(digit_folder, "-j", "2"), cli_records(digit_folder, "-j", "1")
    assert parallel == single
    assert [Path(r["path"]).name for r in parallel] == sorted(p.name for p in digit_folder.iterdir())
    errors = {Path(r["path"]).name: r["error"] for r in parallel if "error" in r}
    assert errors.keys() == {"00700-bad.png", "01300-cut.png"}
    right = [Path(r["path"]).stem.split("-")[1] == str(r["label"]) for r in parallel if "error" not in r]
    assert len(right) == COUNT and np.mean(right) > 0.97


@pytest.mark.slow
def test_ray_data_digit_reader_answers_what_the_cli_answers(digit_folder):
    """A local Ray cluster (2 CPUs), started here: files as bytes through read_binary_files and as paths through
    from_items, two DigitReader actors with one thread each; every row equals the CLI's --json record (fields
    the CLI's record lacks are None). Each actor asks for half a CPU: two whole-CPU actors would hold both
    CPUs, and read_binary_files' read tasks would wait for one forever."""
    ray = _require_ray()
    from edge_infer.ray import FIELDS, DigitReader

    expected = {r["path"]: r for r in cli_records(digit_folder, "--top-k", "3")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        as_bytes = ray.data.read_binary_files(str(digit_folder), include_paths=True)
        paths = sorted(str(p) for p in digit_folder.iterdir())
        as_paths = ray.data.from_items([{"path": p} for p in paths[:300]])
        read = {
            "compute": ray.data.ActorPoolStrategy(size=2),
            "num_cpus": 0.5,
            "batch_size": 256,
            "fn_constructor_kwargs": {"top_k": 3},
        }
        from_bytes = as_bytes.map_batches(DigitReader, **read).take_all()
        from_paths = as_paths.map_batches(DigitReader, **read).take_all()
    finally:
        ray.shutdown()
    assert len(from_bytes) == COUNT + 2 and len(from_paths) == 300
    for row in from_bytes + from_paths:
        record = expected[row["path"]]
        assert set(row) == set(FIELDS) | {"top_k"}
        assert {key: row[key] for key in record} == record
        assert all(row[key] is None for key in set(row) - set(record)), row
