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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, cast, overload

import numpy as np

# onnxruntime's telemetry writes a device id and a database under ~/.cache/Microsoft/ when it is imported (and
# warns in colour where it can't): no files but those asked for. Only this variable, set before the import,
# stops the writing; disable_telemetry_events() below turns off the events.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from edge_infer.files import FileRefused, read_regular_file
from edge_infer.model_check import NotOnnx, UnsafeModel, check_model_bytes
from edge_infer.model_info import CLASSES, INPUT_NAME, OUTPUT_NAME, PIXELS, STEPS, ModelInfo, to_rows
from edge_infer.preprocess import ImageError, ImageInput, as_image_error, preprocess, preprocess_many

try:  # CPython's own sha256 (HACL*), not OpenSSL's: importing hashlib loads libcrypto, +3.6 MiB at start-up
    from _sha2 import sha256  # type: ignore[import-not-found]  # Python >= 3.12
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # Python <= 3.11
    except ImportError:
        from hashlib import sha256

if TYPE_CHECKING:
    from edge_infer.number import NumberPlan, NumberReading

T = TypeVar("T")

ort.disable_telemetry_events()
ort.set_default_logger_severity(3)  # errors only, on stderr: its warnings are not the user's business

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
    edge-export never writes, subgraphs, files that are not regular or over MAX_MODEL_BYTES, and models past
    the reader's limits are refused. It is then probed at batch 1 and across its If switch; whatever goes
    wrong with a model, at load or at any later run, raises ModelError (one line, no path).
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
                raise ModelError(f"cannot read the model: {error}") from None
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, not {threads}")
        if threads is not None:
            threads = min(threads, usable_cpus())  # more threads than cores only adds contention
        if not 0.0 <= min_confidence <= 1.0:
            raise ModelError(f"min_confidence must lie in [0, 1], not {min_confidence}")
        self.min_confidence = float(min_confidence)
        provider = provider or "CPUExecutionProvider"
        available = ort.get_available_providers()
        if provider not in available:
            raise ModelError(f"unknown execution provider {provider!r}; available: {', '.join(available)}")

        self._blob, self._provider, self.threads = blob, provider, threads
        self._parallel: ort.InferenceSession | None = None
        self._lock = threading.Lock()
        self._bound = threading.local()  # per thread: an IO binding for single images (see _run)
        self._load(check_bytes=model is not None)  # (the bundled models are verified by their sha256 instead)

    @property
    def model_bytes(self) -> bytes:
        """The model file's bytes, as loaded."""
        return self._blob

    def _load(self, check_bytes: bool) -> None:
        """Inspect, load, check and probe the model. The one place where whatever a model can make go wrong
        (the byte check, onnxruntime's loader, the metadata parser, the first runs) becomes a ModelError."""
        try:
            if check_bytes:
                self._inspect(self._blob)
            self.session = self._new_session(self.threads or 1)
            self._check_interface()
            try:
                self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
            except ValueError as error:
                raise ModelError(str(error)) from None
            self._probe()
        except ModelError:
            raise
        except Exception as error:  # onnxruntime's own types, or a decoder's (a name that is not UTF-8, ...)
            raise ModelError(f"cannot load the model: {type(error).__name__}: {_first_line(error)}") from None

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
            raise ModelError(f"cannot load the model: not an ONNX model ({hint})") from None
        except UnsafeModel as error:
            raise ModelError(f"refusing the model: {error}") from None

    def _probe(self) -> None:
        """Runs on blank batches, through the same paths images take: 1 image (the IO binding) and a batch on
        the other side of the auto form's switch (its If on the batch size), so that each branch has run
        once. Each must give finite float32 [N, 10] logits (a model with NaN weights is refused here, not
        answered with label 0 and confidence nan)."""
        switch = self.info.large_from_batch
        for batch in (1, max(2, switch or 2)):
            self._checked(self._run(np.zeros((STEPS, batch, PIXELS), np.float32), self.session), batch)

    def _checked(self, logits: object, batch: int) -> np.ndarray:
        """logits if they are float32 [batch, 10] and finite; ModelError otherwise."""
        if not isinstance(logits, np.ndarray) or logits.dtype != np.float32:
            kind = getattr(logits, "dtype", type(logits).__name__)
            raise ModelError(f"not an edge-infer digit model: its {OUTPUT_NAME} are {kind}, expected float32")
        if logits.shape != (batch, CLASSES):
            raise ModelError(
                f"not an edge-infer digit model: for {batch} image{'s' * (batch > 1)} it outputs "
                f"{OUTPUT_NAME}{list(logits.shape)}, expected [{batch}, {CLASSES}]"
            )
        if not np.isfinite(logits).all():
            broken = int((~np.isfinite(logits).all(axis=1)).sum())
            raise ModelError(
                f"the model is broken: its logits are NaN or infinite for {broken} of {batch} image{'s' * (batch > 1)}"
            )
        return logits

    def _new_session(self, threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        # Worker threads spin briefly between steps: 1.3x faster at batch 1024 here. A single thread
        # has no pool, so nothing spins in the default small-batch session.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
        try:
            # No fallback: onnxruntime's retry on another provider announces itself with print() on stdout.
            return ort.InferenceSession(self._blob, options, providers=[self._provider], enable_fallback=0)
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"cannot load the model: {_first_line(error)}") from None

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
        )[:300]
        ok = (
            len(inputs) == 1
            and inputs[0].name == INPUT_NAME
            and len(inputs[0].shape) == 3
            and inputs[0].shape[0] == STEPS
            and inputs[0].shape[2] == PIXELS
            and not isinstance(inputs[0].shape[1], int)
            and inputs[0].type == "tensor(float)"
            and any(
                o.name == OUTPUT_NAME
                and len(o.shape) == 2
                and not isinstance(o.shape[0], int)
                and o.shape[1] == CLASSES
                and o.type == "tensor(float)"
                for o in outputs
            )
        )
        if not ok:
            raise ModelError(
                f"not an edge-infer digit model: it takes {got}, "
                f"expected float32 {INPUT_NAME}[28, N, 28] -> float32 {OUTPUT_NAME}[N, 10]"
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
            logits = self._checked(self._run(rows, self._session_for(rows.shape[1])), rows.shape[1])
            probabilities = softmax(logits)
            labels = probabilities.argmax(axis=1)
            for index, p, label in zip(np.flatnonzero(found), probabilities, labels, strict=True):
                confidence = float(p[label])
                sure = confidence >= self.min_confidence
                results[index] = Prediction(int(label) if sure else -1, confidence, p, guess=int(label))
        return results

    def _run(self, rows: np.ndarray, session: ort.InferenceSession) -> object:
        """The logits for time-major rows [28, n, 28] (unchecked: see _checked; ModelError if onnxruntime
        fails). A single image goes through this thread's IO binding to fixed input and output buffers:
        2-6 us less than session.run's feed and fetch conversion, 5-10 % of a batch-1 call
        (benchmarks/inference.py)."""
        try:
            return self._run_unchecked(rows, session)
        except MemoryError:
            raise
        except Exception as error:  # a model onnxruntime loads but can't run (a mistyped or misshaped output, ...)
            raise ModelError(f"cannot run the model: {type(error).__name__}: {_first_line(error)}") from None

    def _run_unchecked(self, rows: np.ndarray, session: ort.InferenceSession) -> object:
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

    def read_number(self, image: ImageInput, digits: int | None = None) -> NumberReading:
        """Read all the digits of one line of digits (a number) in one image; see edge_infer.number.
        digits: how many digits the number has, when the caller knows (a form's field): the segmentation
        that gives that many is preferred."""
        reading = self.read_numbers([image], digits=digits)[0]
        assert not isinstance(reading, Exception)  # errors="raise"
        return reading

    def read_numbers(
        self, images: Sequence[ImageInput] | Iterable[ImageInput], errors: str = "raise", digits: int | None = None
    ) -> list[NumberReading | ImageError]:
        """read_number for many images, their candidate digits in one session.run per CLASSIFY_BATCH of them
        (so memory stays bounded whatever the images). errors="raise" raises ImageError on the first
        unreadable image; errors="return" puts the ImageError in its place instead (as predict_many does)."""
        from edge_infer.number import CLASSIFY_BATCH, all_digits, decide_all, plan_number  # loaded only when used

        if digits is not None and not 1 <= digits <= 100:
            raise ValueError(f"digits must lie in [1, 100], not {digits}")
        results: list[NumberReading | ImageError | NumberPlan] = []  # a plan waits in its slot until decided
        waiting: list[int] = []  # slots of the plans not yet classified
        candidates = 0  # their candidate digits

        def classify_waiting() -> None:
            plans = [cast("NumberPlan", results[slot]) for slot in waiting]
            found = all_digits(plans)
            readings = decide_all(plans, self.classify(found) if len(found) else [], digits)
            for slot, reading in zip(waiting, readings, strict=True):
                results[slot] = reading
            waiting.clear()

        for image in images:
            (plan,) = read_each([image], plan_number, errors)
            if not isinstance(plan, ImageError):
                waiting.append(len(results))
                candidates += len(plan.digits)
            results.append(plan)
            if candidates >= CLASSIFY_BATCH:
                classify_waiting()
                candidates = 0
        classify_waiting()
        return cast("list[NumberReading | ImageError]", results)


def read_each(images: Iterable[ImageInput], read: Callable[[ImageInput], T], errors: str) -> list[T | ImageError]:
    """read(image) for each image. errors="raise": raise ImageError on the first unreadable image;
    errors="return": put the ImageError in that image's place instead, so one bad image never stops the others
    (a decoder bug's exception becomes an ImageError too). Messages name no path: the caller knows which input
    it was."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    results: list[T | ImageError] = []
    for image in images:
        try:
            results.append(read(image))
        except Exception as error:
            if errors == "raise":
                raise
            results.append(as_image_error(error))
    return results


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return cast(np.ndarray, (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32))
