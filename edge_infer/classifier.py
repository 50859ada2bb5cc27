"""Classifier: an onnxruntime session over an edge-infer .onnx model, plus preprocessing.

    clf = Classifier()                      # the bundled fp32 model
    clf.predict("digit.png").label          # -> 7

One Classifier may be shared by many threads: it holds no mutable state and
onnxruntime's InferenceSession.run is thread-safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnxruntime as ort

from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, PIXELS, STEPS, ModelInfo
from edge_infer.preprocess import ImageInput, preprocess

MODELS_DIR = Path(__file__).resolve().parent / "models"
BUNDLED = {False: "digit-rnn.onnx", True: "digit-rnn-int8.onnx"}
PROVENANCE = "provenance.json"
NO_INK = 1e-3  # a preprocessed image with less total ink than this holds no digit
# With threads=None, batches this large run on all cores; smaller ones on one thread, where a thread pool
# only adds wake-up latency (see benchmarks/: 1 thread is fastest up to batch 64 here).
PARALLEL_BATCH = 256


class ModelError(ValueError):
    """The model can't be used (missing, corrupt, foreign, damaged, or a bad provider); one line."""


@dataclass(frozen=True)
class Prediction:
    label: int  # the most likely digit; -1 when no digit was found
    confidence: float  # its probability (0.0 when no digit was found)
    probabilities: np.ndarray = field(repr=False)  # float32 [10]; all zeros when no digit was found

    @property
    def digit_found(self) -> bool:
        return self.label >= 0

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The k most likely (digit, probability) pairs, most likely first."""
        if not self.digit_found:
            return []
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(d), float(self.probabilities[d])) for d in order]


NO_DIGIT = Prediction(label=-1, confidence=0.0, probabilities=np.zeros(10, np.float32))


def bundled_model_path(int8: bool = False) -> Path:
    return MODELS_DIR / BUNDLED[int8]


def _read_bundled(int8: bool) -> bytes:
    """The bundled model's bytes, after checking them against the sha256 in provenance.json."""
    path = bundled_model_path(int8)
    try:
        blob = path.read_bytes()
        expected = json.loads((MODELS_DIR / PROVENANCE).read_text())["models"][path.name]["sha256"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"bundled model {path.name} is missing or its provenance is unreadable ({error}); "
                         f"reinstall edge-infer") from None
    if hashlib.sha256(blob).hexdigest() != expected:
        raise ModelError(f"bundled model {path} is damaged (sha256 mismatch); reinstall edge-infer")
    return blob


class Classifier:
    """Classifies images of single digits with an edge-infer ONNX model.

    model:    path to (or bytes of) an .onnx file written by edge-export; None = the bundled model.
    int8:     with model=None, use the bundled int8 model.
    threads:  onnxruntime intra-op threads. None: 1 thread for batches below PARALLEL_BATCH and one per
              core for larger ones (each setting is the faster one there; see benchmarks/).
    provider: an onnxruntime execution provider name (default CPUExecutionProvider).
    """

    def __init__(self, model: str | os.PathLike | bytes | None = None, *, int8: bool = False,
                 threads: int | None = None, provider: str | None = None) -> None:
        if model is None:
            blob, self.source = _read_bundled(int8), str(bundled_model_path(int8))
        elif int8:
            raise ModelError("int8=True selects the bundled int8 model; to use your own int8 model, pass its path")
        elif isinstance(model, (bytes, bytearray)):
            blob, self.source = bytes(model), "<bytes>"
        else:
            self.source = os.fspath(model)
            try:
                blob = Path(self.source).read_bytes()
            except OSError as error:
                raise ModelError(f"cannot read model {self.source}: {error.strerror or error}") from None
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, not {threads}")
        provider = provider or "CPUExecutionProvider"
        available = ort.get_available_providers()
        if provider not in available:
            raise ModelError(f"unknown execution provider {provider!r}; available: {', '.join(available)}")

        self._blob, self._provider, self.threads = blob, provider, threads
        self._parallel: ort.InferenceSession | None = None
        self._lock = threading.Lock()
        self._bound = threading.local()  # per thread: an IO binding for single images (see _run)
        self.session = self._new_session(threads or 1)
        self._check_interface()
        try:
            self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ValueError as error:
            raise ModelError(f"{self.source}: {error}") from None

    def _new_session(self, threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        # Worker threads spin briefly between steps: 1.3x faster at batch 1024 here. A single thread
        # has no pool, so nothing spins in the default small-batch session.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
        try:
            return ort.InferenceSession(self._blob, options, providers=[self._provider])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"cannot load model {self.source}: {first[:300]}") from None

    def _session_for(self, batch: int) -> ort.InferenceSession:
        if self.threads is not None or batch < PARALLEL_BATCH or usable_cpus() < 2:
            return self.session
        with self._lock:  # created on first use, once, even when many threads ask at the same time
            if self._parallel is None:
                self._parallel = self._new_session(usable_cpus())
        return self._parallel

    def _check_interface(self) -> None:
        """Refuse foreign models up front rather than failing on the first image."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        got = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
        ok = (len(inputs) == 1 and inputs[0].name == INPUT_NAME and len(inputs[0].shape) == 3
              and inputs[0].shape[0] == STEPS and inputs[0].shape[2] == PIXELS
              and any(o.name == OUTPUT_NAME and len(o.shape) == 2 and o.shape[1] == 10 for o in outputs))
        if not ok:
            raise ModelError(f"{self.source} is not an edge-infer digit model: it takes {got}, "
                             f"expected {INPUT_NAME}[28, N, 28] -> {OUTPUT_NAME}[N, 10]")

    def classify(self, digits: np.ndarray) -> list[Prediction]:
        """Predictions for preprocessed digits, float32 [N, 28, 28] (MNIST form), in one session.run."""
        digits = np.asarray(digits, dtype=np.float32)
        if digits.ndim != 3 or digits.shape[1:] != (28, 28):
            raise ValueError(f"expected preprocessed digits of shape [N, 28, 28], got {list(digits.shape)}")
        found = digits.sum(axis=(1, 2)) > NO_INK
        results = [NO_DIGIT] * len(digits)
        if found.any():
            rows = np.ascontiguousarray(digits[found].transpose(1, 0, 2))  # [28, n, 28]: time-major
            logits = self._run(rows)
            probabilities = softmax(logits)
            labels = probabilities.argmax(axis=1)
            for index, p, label in zip(np.flatnonzero(found), probabilities, labels):
                results[index] = Prediction(int(label), float(p[label]), p)
        return results

    def _run(self, rows: np.ndarray) -> np.ndarray:
        """Logits for time-major rows [28, n, 28]. A single image goes through this thread's IO binding to
        fixed input and output buffers: 2-6 us less than session.run's feed and fetch conversion, 5-10 % of
        a batch-1 call (benchmarks/inference.py)."""
        session = self._session_for(rows.shape[1])
        if rows.shape[1] != 1:
            return session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]
        bound = getattr(self._bound, "single", None)
        if bound is None or bound[0] is not session:
            x, y = np.zeros((STEPS, 1, PIXELS), np.float32), np.zeros((1, 10), np.float32)
            binding = session.io_binding()
            binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(x))  # shares x's memory
            binding.bind_ortvalue_output(OUTPUT_NAME, ort.OrtValue.ortvalue_from_numpy(y))
            self._bound.single = bound = (session, binding, x, y)
        _, binding, x, y = bound
        x[...] = rows
        session.run_with_iobinding(binding)
        return y.copy()

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image: a path, file bytes, a PIL image or a numpy array (HxW or HxWxC)."""
        return self.classify(preprocess(image)[None])[0]

    def predict_batch(self, images: Sequence[ImageInput] | Iterable[ImageInput]) -> list[Prediction]:
        """Classify many images with one session.run. Raises ImageError on the first unreadable image."""
        digits = [preprocess(image) for image in images]
        if not digits:
            return []
        return self.classify(np.stack(digits))


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
