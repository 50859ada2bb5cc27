"""Classifier: an onnxruntime session over an edge-infer .onnx model, plus preprocessing.

    clf = Classifier()                      # the bundled fp32 model
    clf.predict("digit.png").label          # -> 7

One Classifier may be shared by many threads: onnxruntime's InferenceSession.run is thread-safe, and its
only mutable state, the all-cores session for large batches, is created once under a lock.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, overload

import numpy as np
import onnxruntime as ort

from edge_infer.files import FileRefused, read_regular_file
from edge_infer.model_check import NotOnnx, UnsafeModel, check_model_bytes
from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, PIXELS, STEPS, ModelInfo, to_rows
from edge_infer.preprocess import ImageError, ImageInput, preprocess, preprocess_many

try:  # CPython's own sha256 (HACL*), not OpenSSL's: importing hashlib loads libcrypto, +3.6 MiB at start-up
    from _sha2 import sha256  # type: ignore[import-not-found]  # Python >= 3.12
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # Python <= 3.11
    except ImportError:
        from hashlib import sha256

if TYPE_CHECKING:
    from edge_infer.number import NumberPlan, NumberReading

MODELS_DIR = Path(__file__).resolve().parent / "models"
BUNDLED = {False: "digit-rnn.onnx", True: "digit-rnn-int8.onnx"}
PROVENANCE = "provenance.json"
NO_INK = 1e-3  # a preprocessed image with less total ink than this holds no digit
# With threads=None, batches this large run on all cores; smaller ones on one thread, where a thread pool
# only adds wake-up latency (see benchmarks/: 1 thread is fastest up to batch 64 here).
PARALLEL_BATCH = 256
# ... but only with at least this many usable cores. On 2 vCPUs (often the two hyperthreads of one core) a
# second thread never paid: at batch 64 and 1024 it was 1.3-1.5x slower than one thread, quiet or with another
# job on the other core (benchmarks/threads.py, 2 vCPUs of an AMD EPYC; issue 22 saw 1.35x at 1024 idle).
PARALLEL_MIN_CPUS = 4
MAX_MODEL_BYTES = 256 * 2**20  # a model file larger than this is refused before reading (the bundled: ~0.2 MB)


ORT_FORMAT_ID = b"ORTM"  # bytes 4-8 of an onnxruntime ORT-format model (its flatbuffer file identifier)


class ModelError(ValueError):
    """The model can't be used (missing, corrupt, foreign, damaged, or a bad provider); one line."""


@dataclass(frozen=True)
class Prediction:
    label: int  # the most likely digit; -1 when no digit was found, or when unsure (see min_confidence)
    confidence: float  # the most likely digit's probability (0.0 when no digit was found)
    probabilities: np.ndarray = field(repr=False)  # float32 [10]; all zeros when no digit was found
    guess: int | None = None  # the most likely digit whenever ink was found (== label unless unsure)

    def __post_init__(self) -> None:
        if self.guess is None and self.label >= 0:
            object.__setattr__(self, "guess", self.label)

    @property
    def digit_found(self) -> bool:
        """Ink was found, so there is a guess (which may still be unsure)."""
        return self.guess is not None

    @property
    def unsure(self) -> bool:
        """A digit was found, but its probability is below the Classifier's min_confidence: label is -1."""
        return self.guess is not None and self.label < 0

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
        raise ModelError(
            f"bundled model {path.name} is missing or its provenance is unreadable ({error}); reinstall edge-infer"
        ) from None
    if sha256(blob).hexdigest() != expected:
        raise ModelError(f"bundled model {path} is damaged (sha256 mismatch); reinstall edge-infer")
    return blob


class Classifier:
    """Classifies images of single digits with an edge-infer ONNX model.

    model:    path to (or bytes of) an .onnx file written by edge-export, or its ORT-format .ort twin
              (`edge-export --ort`; onnxruntime tells the two apart by their bytes); None = the bundled model.
    int8:     with model=None, use the bundled int8 model.
    threads:  onnxruntime intra-op threads. None: 1 thread for batches below PARALLEL_BATCH and one per
              core for larger ones on machines with PARALLEL_MIN_CPUS cores or more; 1 thread always on
              smaller ones (each setting is the faster one there, busy or not; see benchmarks/threads.py).
    provider: an onnxruntime execution provider name (default CPUExecutionProvider).
    min_confidence: below this top probability the answer is "not sure": label -1, with the most likely digit
              kept in Prediction.guess (Prediction.unsure is True). 0 (the default) always answers.

    The model is inspected before onnxruntime sees it (edge_infer.model_check): external data, operators
    edge-export never writes, subgraphs and files that are not regular or over MAX_MODEL_BYTES are refused.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes | None = None,
        *,
        int8: bool = False,
        threads: int | None = None,
        provider: str | None = None,
        min_confidence: float = 0.0,
    ) -> None:
        if model is None:
            blob, self.source = _read_bundled(int8), str(bundled_model_path(int8))
        elif int8:
            raise ModelError("int8=True selects the bundled int8 model; to use your own int8 model, pass its path")
        elif isinstance(model, (bytes, bytearray)):
            blob, self.source = bytes(model), "<bytes>"
        else:
            self.source = os.fspath(model)
            try:
                blob = read_regular_file(self.source, MAX_MODEL_BYTES)
            except FileRefused as error:
                raise ModelError(f"cannot read model {self.source}: {error}") from None
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, not {threads}")
        if threads is not None:
            threads = min(threads, usable_cpus())  # more threads than cores only adds contention
        if not 0.0 <= min_confidence <= 1.0:
            raise ModelError(f"min_confidence must lie in [0, 1], not {min_confidence}")
        self.min_confidence = float(min_confidence)
        if model is not None:  # (the bundled models are verified by their sha256 instead)
            self._inspect(blob)
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
        self._probe()

    def _inspect(self, blob: bytes) -> None:
        """Refuse what is not an edge-export model before onnxruntime parses it (see model_check).

        ORT-format files (edge-export --ort; a flatbuffer with the identifier "ORTM") are not protobuf: they
        get the same metadata, interface and probe checks as any model, but not this scan (README: Security
        and limits): load .ort files you made yourself."""
        if blob[4:8] == ORT_FORMAT_ID:
            return
        try:
            check_model_bytes(blob)
        except NotOnnx as error:
            checkpoint = blob[:4] == b"PK\x03\x04" or blob[:1] == b"\x80"  # torch.save: a zip, or a pickle
            hint = "is it a checkpoint? run edge-export" if checkpoint else error
            raise ModelError(f"cannot load model {self.source}: not an ONNX model ({hint})") from None
        except UnsafeModel as error:
            raise ModelError(f"refusing model {self.source}: {error}") from None

    def _probe(self) -> None:
        """One run on a blank batch of 1: the output must be [1, 10] and finite (a model with NaN weights is
        refused here, not answered with label 0 and confidence nan)."""
        try:
            logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((STEPS, 1, PIXELS), np.float32)})[0]
        except Exception as error:
            raise ModelError(f"cannot run model {self.source}: {_first_line(error)}") from None
        if logits.shape != (1, 10):
            raise ModelError(
                f"{self.source} is not an edge-infer digit model: for 1 image it outputs "
                f"{OUTPUT_NAME}{list(logits.shape)}, expected [1, 10]"
            )
        if not np.isfinite(logits).all():
            raise ModelError(f"model {self.source} is broken: its logits are NaN or infinite")

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
            raise ModelError(f"cannot load model {self.source}: {_first_line(error)}") from None

    def _session_for(self, batch: int) -> ort.InferenceSession:
        if self.threads is not None or batch < PARALLEL_BATCH or usable_cpus() < PARALLEL_MIN_CPUS:
            return self.session
        with self._lock:  # created on first use, once, even when many threads ask at the same time
            if self._parallel is None:
                self._parallel = self._new_session(usable_cpus())
        return self._parallel

    def _check_interface(self) -> None:
        """Refuse foreign models up front rather than failing on the first image."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        got = (
            ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
            + " -> "
            + ", ".join(f"{o.name}{list(o.shape)}" for o in outputs)
        )
        ok = (
            len(inputs) == 1
            and inputs[0].name == INPUT_NAME
            and len(inputs[0].shape) == 3
            and inputs[0].shape[0] == STEPS
            and inputs[0].shape[2] == PIXELS
            and any(o.name == OUTPUT_NAME and len(o.shape) == 2 and o.shape[1] == 10 for o in outputs)
        )
        if not ok:
            raise ModelError(
                f"{self.source} is not an edge-infer digit model: it takes {got}, "
                f"expected {INPUT_NAME}[28, N, 28] -> {OUTPUT_NAME}[N, 10]"
            )

    def classify(self, digits: np.ndarray) -> list[Prediction]:
        """Predictions for preprocessed digits, float32 [N, 28, 28] (MNIST form), in one session.run."""
        digits = np.asarray(digits, dtype=np.float32)
        if digits.ndim != 3 or digits.shape[1:] != (28, 28):
            raise ValueError(f"expected preprocessed digits of shape [N, 28, 28], got {list(digits.shape)}")
        found = digits.sum(axis=(1, 2)) > NO_INK
        results = [NO_DIGIT] * len(digits)
        if found.any():
            rows = to_rows(digits[found])  # [28, n, 28]: time-major
            logits = self._run(rows)
            if not np.isfinite(logits).all():
                raise ModelError(
                    f"model {self.source} is broken: its logits are NaN or infinite for "
                    f"{int((~np.isfinite(logits).all(axis=1)).sum())} of {len(logits)} images"
                )
            probabilities = softmax(logits)
            labels = probabilities.argmax(axis=1)
            for index, p, label in zip(np.flatnonzero(found), probabilities, labels, strict=True):
                confidence = float(p[label])
                sure = confidence >= self.min_confidence
                results[index] = Prediction(int(label) if sure else -1, confidence, p, guess=int(label))
        return results

    def _run(self, rows: np.ndarray) -> np.ndarray:
        """Logits for time-major rows [28, n, 28]. A single image goes through this thread's IO binding to
        fixed input and output buffers: 2-6 us less than session.run's feed and fetch conversion, 5-10 % of
        a batch-1 call (benchmarks/inference.py)."""
        session = self._session_for(rows.shape[1])
        if rows.shape[1] != 1:
            return cast(np.ndarray, session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0])
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
        return cast(np.ndarray, y.copy())

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image: a path, file bytes, a PIL image or a numpy array (HxW or HxWxC)."""
        return self.classify(preprocess(image)[None])[0]

    def predict_batch(self, images: Sequence[ImageInput] | Iterable[ImageInput]) -> list[Prediction]:
        """Classify many images with one session.run. Raises ImageError on the first unreadable image."""
        return self.predict_many(images)

    @overload
    def predict_many(self, images: Iterable[ImageInput], errors: Literal["raise"] = "raise") -> list[Prediction]: ...

    @overload
    def predict_many(
        self, images: Iterable[ImageInput], errors: Literal["return"]
    ) -> list[Prediction | ImageError]: ...

    def predict_many(
        self, images: Iterable[ImageInput], errors: Literal["raise", "return"] = "raise"
    ) -> list[Prediction] | list[Prediction | ImageError]:
        """Classify many images with one session.run for all the readable ones.

        errors="raise": raise ImageError on the first unreadable image. errors="return": put the ImageError in
        that image's place instead, so one bad image never stops the others (a decoder bug's exception
        becomes an ImageError too). Messages name no path: the caller knows which input it was.
        """
        digits, failures = preprocess_many(images, errors)
        return self.classify_in_place(digits, failures)

    def classify_in_place(
        self, digits: np.ndarray, failures: Sequence[ImageError | None]
    ) -> list[Prediction | ImageError]:
        """classify(digits) (one session.run), with the failures in their places: failures holds, per image,
        its ImageError or None, and each None takes the next of digits (preprocess_many's two results)."""
        predictions = iter(self.classify(digits) if len(digits) else [])
        return [next(predictions) if failure is None else failure for failure in failures]

    def read_number(self, image: ImageInput) -> NumberReading:
        """Read all the digits of one line of digits (a number) in one image; see edge_infer.number."""
        reading = self.read_numbers([image])[0]
        assert not isinstance(reading, Exception)  # errors="raise"
        return reading

    def read_numbers(
        self, images: Sequence[ImageInput] | Iterable[ImageInput], errors: str = "raise"
    ) -> list[NumberReading | ImageError]:
        """read_number for many images, all their candidate digits in one session.run. errors="raise" raises
        ImageError on the first unreadable image; errors="return" puts the ImageError in its place instead
        (as predict_many does)."""
        from edge_infer.number import decide, plan_number  # the number reader loads only when used

        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        plans: list[NumberPlan | ImageError] = []
        for image in images:
            try:
                plans.append(plan_number(image))
            except Exception as error:  # with "return", even a decoder bug must not lose the other images
                if errors == "raise":
                    raise
                plans.append(
                    error
                    if isinstance(error, ImageError)
                    else ImageError(
                        f"unexpected {type(error).__name__} while reading the image: {_first_line(error)[:200]}"
                    )
                )
        good = [plan for plan in plans if not isinstance(plan, Exception)]
        counts = [len(plan.digits) for plan in good]
        predictions = self.classify(np.concatenate([plan.digits for plan in good])) if sum(counts) else []
        offsets = np.cumsum([0] + counts).tolist()
        readings = iter([decide(plan, predictions[offsets[i] : offsets[i + 1]]) for i, plan in enumerate(good)])
        return [plan if isinstance(plan, Exception) else next(readings) for plan in plans]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return cast(np.ndarray, (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32))
