"""Ray Data: classify millions of digit images on a cluster, one Classifier per actor (`edge-infer[ray]`).

    import ray
    from edge_infer.ray import DigitReader

    ray.init()  # or ray.init(address="auto") on a cluster
    images = ray.data.read_binary_files("s3://bucket/scans/", include_paths=True)
    digits = images.map_batches(DigitReader, concurrency=8, num_cpus=1, batch_size=256)
    digits.write_json("s3://bucket/digits/")

DigitReader is a callable class, so Ray Data runs it in a pool of actors (`concurrency`), each holding one
Classifier with one onnxruntime thread (Ray gives each actor its own CPU: `num_cpus=1`). A batch holds the
images as file bytes ("bytes", what read_binary_files gives) or as paths every node can read ("path" alone,
e.g. `ray.data.from_items([{"path": p} for p in paths])`); the output rows carry the CLI's --json fields
(edge_infer.cli.digit_record / error_record, the one implementation): path, label, confidence,
probabilities, and no_digit, unsure, guess, top_k or error where the CLI's record has them (None elsewhere).
This module needs pyarrow (installed with ray[data]); ray itself is imported only by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_infer.classifier import Classifier
from edge_infer.cli import digit_record, error_record
from edge_infer.preprocess import ImageInput, preprocess_many

__all__ = ["DigitReader", "FIELDS"]

FIELDS = ("path", "label", "confidence", "probabilities", "no_digit", "unsure", "guess", "error")  # + top_k


class DigitReader:
    """One actor's Classifier (one onnxruntime thread); called once per batch of images.

    model, int8, min_confidence: as for Classifier (model is a path every node can read, or the bytes).
    top_k: > 1 adds the CLI's top_k field.
    """

    def __init__(
        self,
        model: str | bytes | None = None,
        *,
        int8: bool = False,
        min_confidence: float = 0.0,
        top_k: int = 1,
    ) -> None:
        if not 1 <= top_k <= 10:
            raise ValueError(f"top_k must lie in 1..10, not {top_k}")
        # one thread per actor: Ray scales out with actors, and a second thread never paid on 2 vCPUs
        self.classifier = Classifier(model, int8=int8, threads=1, min_confidence=min_confidence)
        self.top_k = top_k

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> Any:
        """A batch of images ("bytes" and/or "path" columns) -> a pyarrow Table of the CLI's JSON fields."""
        import pyarrow as pa  # (only here: the runtime itself never needs it)

        if "bytes" not in batch and "path" not in batch:
            raise ValueError(f"a batch needs a 'bytes' or a 'path' column; it has {', '.join(batch) or 'none'}")
        paths = [str(p) for p in batch["path"]] if "path" in batch else [""] * len(batch["bytes"])
        images: list[ImageInput] = [bytes(b) for b in batch["bytes"]] if "bytes" in batch else list(paths)
        digits, failures = preprocess_many(images)
        records = [
            error_record(path, result) if isinstance(result, Exception) else digit_record(path, result, self.top_k)
            for path, result in zip(paths, self.classifier.classify_in_place(digits, failures), strict=True)
        ]
        columns, types = FIELDS + (("top_k",) if self.top_k > 1 else ()), _arrow_types()
        return pa.table({name: pa.array([r.get(name) for r in records], types[name]) for name in columns})


def _arrow_types() -> dict[str, Any]:
    """The columns' Arrow types (fixed, so every batch has the same schema whatever it holds)."""
    import pyarrow as pa

    return {
        "path": pa.string(),
        "label": pa.int64(),
        "confidence": pa.float64(),
        "probabilities": pa.list_(pa.float64()),
        "no_digit": pa.bool_(),
        "unsure": pa.bool_(),
        "guess": pa.int64(),
        "error": pa.string(),
        "top_k": pa.list_(pa.list_(pa.float64())),
    }
