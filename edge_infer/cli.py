"""edge-infer: classify digit images from files, directories or stdin. A thin shell over Classifier.
`edge-infer serve ...` (first argument) runs the HTTP server instead (edge_infer.serve).

Exit codes: 0 every image classified, 1 some input failed (the rest are still printed), 2 usage error.

Start-up is kept near the floor of importing onnxruntime, numpy and Pillow: plain `edge-infer PATH...` (no
options) never imports the option parser, and worker processes, JSON and the like are imported only when used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from edge_infer.classifier import ORT_FORMAT_ID, Classifier, ModelError, Prediction, usable_cpus
from edge_infer.preprocess import ImageError, ImageInput, preprocess_many
from edge_infer.progress import ProgressBar

if TYPE_CHECKING:
    import click
    import numpy as np

    from edge_infer.number import NumberReading  # loaded only by --number (start-up stays lean)

PROG = "edge-infer"
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".ico", ".tga"}
)
# Phone photo formats found in directories are reported rather than skipped silently.
UNSUPPORTED_SUFFIXES = frozenset({".heic", ".heif", ".avif"})
CHUNK = 256  # images per session.run, which is also one task of a worker process
AHEAD = 4  # chunks in flight per worker process: enough to keep them busy while the model runs here
PARALLEL_FROM = 256  # use worker processes from this many images on (starting them costs ~20 ms)
FLUSH_EVERY = CHUNK  # output lines are written and flushed in groups of this many (one chunk's worth)


@dataclass
class Options:
    """The command line's settings; their defaults are the defaults of the options below."""

    as_json: bool = False
    top_k: int = 1
    model: str | None = None
    int8: bool = False
    threads: int = 1
    provider: str | None = None
    jobs: int | None = None
    info: bool = False
    min_confidence: float = 0.0
    number: bool = False  # read each image as one number (a line of digits)
    digits: int | None = None  # with --number: how many digits each number has, when known
    graph_file: str | None = None  # draw the model's graph here (.svg or .png)
    save_dir: str | None = None  # write what the model saw, per image, into this directory
    quiet: bool = False  # no progress bar

    def classifier_options(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "int8": self.int8,
            "threads": self.threads,
            "provider": self.provider,
            "min_confidence": self.min_confidence,
        }


def _die(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.exit(2)


def display(path: str) -> str:
    """A path as printed: undecodable bytes as \\xNN, and backslash, tab, CR and newline escaped (\\\\, \\t,
    \\r, \\n) so that one image is always one line and three TSV columns."""
    if "\\" in path or "\t" in path or "\n" in path or "\r" in path:
        path = path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogate escapes for bytes that are not UTF-8
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


def expand(paths: tuple[str, ...] | list[str]) -> Iterator[tuple[str, ImageError | None]]:
    """(path, error or None) for every input: files as given, directories walked recursively
    (image files only, sorted; a subdirectory that cannot be listed is an error), '-' for stdin."""
    for path in paths:
        if path == "-":
            yield path, None
            continue
        try:
            is_dir = os.path.isdir(path)
        except ValueError:  # a NUL in the path: Classifier reports it
            is_dir = False
        if not is_dir:
            yield path, None  # a file, or not: reading it says which (one message for each problem)
            continue
        found = False
        unreadable: list[OSError] = []  # subdirectories os.walk could not list: each is one failed input
        for root, dirs, files in os.walk(path, onerror=unreadable.append):
            found = found or bool(unreadable)
            yield from _unreadable(unreadable, path)
            dirs.sort()
            for name in sorted(files):
                suffix = os.path.splitext(name)[1].lower()
                if suffix in IMAGE_SUFFIXES:
                    found = True
                    yield os.path.join(root, name), None
                elif suffix in UNSUPPORTED_SUFFIXES:
                    found = True
                    yield (
                        os.path.join(root, name),
                        ImageError(f"{suffix[1:].upper()} images are not supported; convert it to JPEG or PNG"),
                    )
        found = found or bool(unreadable)
        yield from _unreadable(unreadable, path)
        if not found:
            yield path, ImageError("directory holds no image files")


def _unreadable(errors: list[OSError], walked: str) -> Iterator[tuple[str, ImageError]]:
    """expand's report of the directories os.walk could not list (then forgets them)."""
    for error in errors:
        where = os.fsdecode(error.filename) if error.filename is not None else walked
        yield where, ImageError(f"cannot read the directory: {error.strerror or error}")
    errors.clear()


def _images(paths: list[str], stdin: bytes | None) -> list[ImageInput]:
    return [stdin if path == "-" and stdin is not None else path for path in paths]


def classify_chunk(
    classifier: Classifier, paths: list[str], stdin: bytes | None = None
) -> list[Prediction | ImageError]:
    """A prediction or an ImageError for each path, with one session.run for them all."""
    return classifier.predict_many(_images(paths, stdin), errors="return")


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for this process when its parent dies


def _start_worker(parent: int) -> None:
    """A worker process's initializer: end with the parent, even one killed by SIGKILL (idle workers wait on a
    queue that then never closes: each would keep its ~65 MB). Linux: the kernel sends SIGTERM at the
    parent's death (strictly, when the thread that started the pool ends: the CLI's main thread); elsewhere
    a daemon thread looks at the parent pid every second."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    asked = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            asked = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
        except (OSError, AttributeError):
            asked = False
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    if not asked:
        import threading
        import time

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="edge-infer-parent-watch", daemon=True).start()


def _preprocess_in_worker(paths: list[str]) -> tuple[np.ndarray, list[ImageError | None]]:
    """A worker process's task: read and preprocess one chunk (the parent runs the model on it)."""
    return preprocess_many(paths)


def classify_all(
    paths: list[str], stdin: bytes | None, classifier: Classifier, jobs: int
) -> Generator[Prediction | ImageError, None, None]:
    """classify_chunk over all paths, in order, CHUNK at a time. Many images are read and preprocessed by
    `jobs` worker processes, and the model runs here, one session.run per chunk, while they read on."""
    chunks = [paths[start : start + CHUNK] for start in range(0, len(paths), CHUNK)]
    if jobs > 1 and len(paths) >= PARALLEL_FROM and stdin is None and hasattr(os, "fork"):
        yield from _classify_in_workers(chunks, classifier, min(jobs, len(chunks)))
    else:
        for chunk in chunks:
            yield from classify_chunk(classifier, chunk, stdin)


def _classify_in_workers(
    chunks: list[list[str]], classifier: Classifier, jobs: int
) -> Iterator[Prediction | ImageError]:
    """Chunks preprocessed by worker processes and classified here, in order; at most AHEAD chunks per
    worker are in flight, so memory stays bounded however many images there are. A worker that dies (the
    OOM killer, a decoder crash) is noticed at once; the chunks it took down are read again here, once, so
    the CLI always ends."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(
        jobs, multiprocessing.get_context("fork"), initializer=_start_worker, initargs=(os.getpid(),)
    )
    warned = False
    pending: deque[tuple[list[str], Future[tuple[np.ndarray, list[ImageError | None]]]]] = deque()
    upcoming = iter(chunks)
    try:
        while True:
            while len(pending) < AHEAD * jobs and not warned:
                chunk = next(upcoming, None)
                if chunk is None:
                    break
                pending.append((chunk, pool.submit(_preprocess_in_worker, chunk)))
            if not pending:
                chunk = next(upcoming, None)  # (after a worker died: the rest is read here)
                if chunk is None:
                    break
                yield from classify_chunk(classifier, chunk)
                continue
            chunk, future = pending.popleft()
            try:
                digits, failures = future.result()
            except BrokenProcessPool:
                if not warned:
                    sys.stderr.write(
                        f"{PROG}: warning: a decoding process died; reading its images again in the main process\n"
                    )
                    warned = True
                digits, failures = preprocess_many(chunk)
            yield from classifier.classify_in_place(digits, failures)
    finally:
        pool.shutdown(wait=not warned, cancel_futures=True)


def _round(value: float) -> float:
    return round(float(value), 6)


def digit_record(path: str, prediction: Prediction, top_k: int, digits_seen: int = 1) -> dict[str, Any]:
    """The --json record of one digit (also what `edge-infer serve` answers); path as given. digits_seen: how
    many digits the image seems to hold (said when more than one)."""
    record: dict[str, Any] = {
        "path": display(path),
        "label": prediction.label if prediction.label >= 0 else None,
        "confidence": _round(prediction.confidence),
        "probabilities": [_round(p) for p in prediction.probabilities],
    }
    if not prediction.digit_found:
        record["no_digit"] = True
    elif prediction.unsure:
        record["unsure"], record["guess"] = True, prediction.guess
    if digits_seen > 1:
        record["digits_seen"] = digits_seen
    if top_k > 1:
        record["top_k"] = [[d, _round(p)] for d, p in prediction.top_k(top_k)]
    return record


def format_line(path: str, prediction: Prediction, top_k: int, as_json: bool, digits_seen: int = 1) -> str:
    """One output line; path as given (it is escaped here with display()). digits_seen: see digit_record."""
    if as_json:
        import json

        return json.dumps(digit_record(path, prediction, top_k, digits_seen), allow_nan=False)
    if not prediction.digit_found:
        return f"{display(path)}\t-\t0.0000"
    label = prediction.label if prediction.label >= 0 else "-"  # '-': not sure (below --min-confidence)
    extra = "".join(f"\t{d}:{p:.4f}" for d, p in prediction.top_k(top_k)[1:]) if top_k > 1 else ""
    return f"{display(path)}\t{label}\t{prediction.confidence:.4f}{extra}"


def read_number_chunks(
    classifier: Classifier, paths: list[str], stdin: bytes | None = None, digits: int | None = None
) -> Generator[NumberReading | ImageError, None, None]:
    """--number: a reading or an ImageError for each path, CHUNK images per read_numbers."""
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        yield from classifier.read_numbers(_images(chunk, stdin), errors="return", digits=digits)


def number_record(path: str, reading: NumberReading) -> dict[str, Any]:
    """The --number --json record of one image (also what `edge-infer serve` answers); path as given."""
    digits = [
        {"label": d.label if d.label >= 0 else None, "confidence": _round(d.confidence), "box": list(d.box)}
        for d in reading.digits
    ]
    return {"path": display(path), "number": reading.text, "confidence": _round(reading.confidence), "digits": digits}


def format_number(path: str, reading: NumberReading, as_json: bool) -> str:
    if as_json:
        import json

        return json.dumps(number_record(path, reading), allow_nan=False)
    return f"{display(path)}\t{reading.text or '-'}\t{reading.confidence:.4f}"


def _draw_graph(classifier: Classifier, graph_file: str) -> None:
    from edge_infer.draw_graph import MAX_NODES, draw, summarize
    from edge_infer.files import FileRefused
    from edge_infer.onnx_graph import OnnxFormatError, read_model

    try:
        draw(summarize(read_model(classifier.model_bytes, MAX_NODES)), graph_file)
    except (OSError, OnnxFormatError, FileRefused) as error:
        _die(f"cannot draw the graph into {display(graph_file)}: {getattr(error, 'strerror', None) or error}")


def _check_graph_file(graph_file: str) -> None:
    """--graph's usage error, found before any work is done."""
    if os.path.isdir(graph_file) or os.path.splitext(graph_file)[1].lower() not in (".svg", ".png"):
        _die(f"--graph {display(graph_file)}: the picture must be a .svg or .png file")


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        _die(f"--save-input {path}: it is a file, not a directory")
    except OSError as error:
        _die(f"--save-input {path}: cannot create the directory: {error.strerror or error}")


def _refuse_shadowing(save_dir: str, paths: list[str]) -> None:
    """--save-input DIR must not hold any of the inputs: its pictures would sit among (and be named like)
    the images they explain, and be read as inputs by the next run over that directory."""
    target = os.path.realpath(save_dir)
    resolved: dict[str, str] = {}
    for path in paths:
        if path == "-":
            continue
        folder = os.path.dirname(path) or "."
        if folder not in resolved:
            try:
                resolved[folder] = os.path.realpath(folder)
            except ValueError:  # a NUL in the path: reading it reports that
                resolved[folder] = ""
        if resolved[folder] and os.path.commonpath([target, resolved[folder]]) == target:
            _die(
                f"--save-input {save_dir}: the directory holds the input {display(path)}; "
                "write the pictures into a directory of their own"
            )


def model_problem(model: str | None, error: ModelError) -> str:
    """The one line for an unusable model: ModelError names no path, so --model's is added here."""
    return f"--model {display(model)}: {error}" if model else str(error)


def error_record(path: str, error: ImageError) -> dict[str, Any]:
    return {"path": display(path), "error": str(error)}


def _save_picture(
    image: ImageInput, path: str, result: Prediction | NumberReading, save_dir: str, used: dict[str, int]
) -> bool:
    """--save-input: what the model saw of one image (input_picture's, or for --number number_picture's)
    into save_dir; False, with a one-line message, when it cannot be written."""
    from edge_infer.input_picture import save_explanation, save_picture  # Pillow's drawing: only when asked for

    try:
        if isinstance(result, Prediction):
            save_explanation(image, path, result, save_dir, used)
        else:
            from edge_infer.number_picture import explain_number

            save_picture(explain_number(image, result), path, save_dir, used)
    except (OSError, ValueError) as error:
        sys.stderr.write(
            f"{PROG}: {display(path)}: cannot save its picture in {save_dir}: "
            f"{getattr(error, 'strerror', None) or error}\n"
        )
        return False
    return True


HINTS_SHOWN = 3  # "seems to hold several digits" hints on stderr, at most, then one line that more were


def _digits_seen(image: str | bytes) -> int:
    """How many digits an image classified as one digit seems to hold: counted (edge_infer.number) only
    for files of at least 1 KiB (a 28x28 digit is smaller: bulk MNIST-like runs pay one stat) that are at
    least WIDE_IMAGE times as wide as high (the others pay a header read, ~90 us)."""
    try:
        if (len(image) if isinstance(image, bytes) else os.stat(image).st_size) < 1024:
            return 1
    except (OSError, ValueError):
        return 1
    import io

    from PIL import Image

    from edge_infer.number import WIDE_IMAGE, count_digits

    try:
        with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as header:
            if header.width < WIDE_IMAGE * header.height:
                return 1
        return count_digits(image)
    except Exception:  # the image was read once already; a second look that fails changes nothing
        return 1


def _hint(path: str, seen: int, hints: int) -> None:
    if hints <= HINTS_SHOWN:
        sys.stderr.write(
            f"{PROG}: hint: {display(path)} seems to hold {seen} digits; to read them all as a number, use --number\n"
        )
    elif hints == HINTS_SHOWN + 1:
        sys.stderr.write(f"{PROG}: hint: more images seem to hold several digits (--json says digits_seen)\n")


def format_error(path: str, error: ImageError, as_json: bool) -> str:
    if as_json:
        import json

        return json.dumps(error_record(path, error))
    return f"{PROG}: {display(path)}: {error}"


def info_record(classifier: Classifier) -> dict[str, Any]:
    """--info: the model's source and metadata (also GET /v1/model of `edge-infer serve`)."""
    from dataclasses import asdict

    return {"source": classifier.source, **asdict(classifier.info)}


def _print_info(classifier: Classifier, as_json: bool) -> None:
    import json

    from edge_infer.model_info import MAX_METADATA_VALUE
    from edge_infer.onnx_graph import printable

    info = info_record(classifier)
    if as_json:
        print(json.dumps(info))  # (JSON escapes control characters)
    else:
        for key, value in info.items():  # a model's text never reaches the terminal raw (escape sequences)
            text = value if isinstance(value, str) else json.dumps(value)
            print(f"{key}: {printable(text, MAX_METADATA_VALUE)}")


def run(paths: tuple[str, ...] | list[str], options: Options) -> None:
    """Classify paths and print the results; exits with the CLI's exit code."""
    import warnings

    warnings.simplefilter("ignore")  # Pillow's and numpy's warnings about odd files are not the user's output
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # a file name never crashes the output
    if not paths and not options.info and not options.graph_file:
        _die("no input: give image files, directories, or - for stdin (see --help)")
    if list(paths).count("-") > 1:
        _die("stdin ('-') can be read only once")
    if options.number and options.top_k > 1:
        _die("--top-k applies to single digits, not to --number")
    if options.digits is not None and not options.number:
        _die("--digits applies to --number (how many digits each number has)")
    if options.int8 and options.model:
        _die("--int8 selects the bundled int8 model; with --model, pass your int8 file itself")
    if options.graph_file:
        _check_graph_file(options.graph_file)
    try:
        classifier = Classifier(**options.classifier_options())
    except ModelError as error:  # its message names no path
        _die(model_problem(options.model, error))
    if options.graph_file and classifier.model_bytes[4:8] == ORT_FORMAT_ID:  # before anything is done
        _die(
            f"--graph: {display(options.model or '')} is an ORT-format model, which can't be drawn; draw its .onnx twin"
        )
    if options.info:
        _print_info(classifier, options.as_json)
    if options.graph_file:
        _draw_graph(classifier, options.graph_file)
    if not paths:
        return
    if options.save_dir:
        _make_dir(options.save_dir)

    stdin = sys.stdin.buffer.read() if "-" in paths else None
    jobs = options.jobs or usable_cpus()
    inputs = list(expand(paths))
    if options.save_dir:
        _refuse_shadowing(options.save_dir, [path for path, _ in inputs])
    good = [path for path, error in inputs if error is None]
    predicted: Generator[Prediction | NumberReading | ImageError, None, None] = (
        read_number_chunks(classifier, good, stdin, options.digits)
        if options.number
        else classify_all(good, stdin, classifier, jobs)
    )
    failed = False
    lines: list[str] = []
    bar = ProgressBar(len(inputs), enabled=not options.quiet)
    saved_names: dict[str, int] = {}  # picture name -> next number to try (see save_explanation)
    hints = 0  # images that seem to hold several digits, read as one
    try:
        for index, (path, refused) in enumerate(inputs, 1):
            result = refused if refused is not None else next(predicted)
            bar.update(index)
            if isinstance(result, ImageError):
                failed = True
                bar.clear()
                sys.stderr.write(format_error(path, result, False) + "\n")
                if options.as_json:
                    lines.append(format_error(path, result, True))
            else:
                image = stdin if path == "-" and stdin is not None else path  # (stdin is read when "-" is given)
                if options.number:
                    lines.append(format_number(path, cast("NumberReading", result), options.as_json))
                else:
                    assert isinstance(result, Prediction)  # without --number every result is a Prediction
                    seen = _digits_seen(image) if result.digit_found else 1
                    lines.append(format_line(path, result, options.top_k, options.as_json, seen))
                    if seen > 1:
                        hints += 1
                        bar.clear()
                        _hint(path, seen, hints)
                if options.save_dir and not _save_picture(image, path, result, options.save_dir, saved_names):
                    failed = True
                    bar.clear()
            if lines and (index % FLUSH_EVERY == 0 or index == len(inputs)):
                bar.clear()  # stdout may be the same terminal
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
                lines.clear()
        bar.finish()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except ModelError as broken:  # e.g. NaN logits: what was printed stays printed
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
        _die(str(broken))
    finally:
        predicted.close()  # stops worker processes, if any
    sys.exit(1 if failed else 0)


def _command() -> click.Command:
    """The full command line (click), built only when options are given."""
    import click

    from edge_infer.cli_errors import OneLineErrors

    defaults = Options()

    @click.command(PROG, cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("paths", nargs=-1)
    @click.option("--json", "as_json", is_flag=True, help="JSON Lines: path, label, confidence, probabilities.")
    @click.option(
        "--top-k",
        type=click.IntRange(1, 10),
        default=defaults.top_k,
        show_default=True,
        help="Also print the next most likely digits.",
    )
    @click.option(
        "--model",
        type=click.Path(dir_okay=False),
        default=defaults.model,
        help="An .onnx (or .ort) model from edge-export (default: the bundled one).",
    )
    @click.option("--int8", is_flag=True, help="Use the bundled int8 model.")
    @click.option(
        "--threads",
        type=click.IntRange(1),
        default=defaults.threads,
        show_default=True,
        help="onnxruntime intra-op threads, capped at the usable cores (decoding, in --jobs processes, "
        "is the larger cost).",
    )
    @click.option(
        "--provider", default=defaults.provider, help="onnxruntime execution provider (default CPUExecutionProvider)."
    )
    @click.option(
        "--jobs",
        "-j",
        type=click.IntRange(1, 1024),
        default=defaults.jobs,
        help="Processes decoding images for large batches (default: one per CPU core).",
    )
    @click.option(
        "--min-confidence",
        type=click.FloatRange(0.0, 1.0),
        default=defaults.min_confidence,
        metavar="P",
        help="Below this probability answer '-' (not sure); JSON keeps the guess.",
    )
    @click.option(
        "--number",
        is_flag=True,
        help="Read each image as one number (a line of digits): path, digits ('?' below --min-confidence), "
        "confidence (the digits' and the segmentation's); with --json also each digit's label, confidence "
        "and box.",
    )
    @click.option(
        "--digits",
        type=click.IntRange(1, 100),
        default=defaults.digits,
        metavar="N",
        help="With --number: each number has N digits (a form's field); the segmentation giving N is preferred.",
    )
    @click.option("--info", is_flag=True, help="Print the model's metadata and exit.")
    @click.option(
        "--graph",
        "graph_file",
        metavar="FILE",
        default=defaults.graph_file,
        help="Draw the model's graph into FILE (.svg or .png), then exit unless images are given.",
    )
    @click.option(
        "--save-input",
        "save_dir",
        metavar="DIR",
        default=defaults.save_dir,
        help="Write a new DIR/<image name>.png for each image (a name already taken gets -2, -3, ...; "
        "nothing is overwritten): the original, the 28x28 input the model saw, and the top-3 probabilities; "
        "with --number the image with each digit's box and label, and each digit's 28x28 input.",
    )
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar (shown only on a terminal, for many images).")
    @click.version_option(package_name="edge-infer")
    def command(paths: tuple[str, ...], **settings: Any) -> None:
        """Classify handwritten or printed digits in PATH... (image files, directories, or - for stdin).

        Prints one line per image: path, digit, confidence (tab-separated); '-' for the digit when the image
        holds none. `edge-infer serve --help`: the same over HTTP, with a drawing page (a file named serve: ./serve).
        """
        run(paths, Options(**settings))

    return command


def main(args: list[str] | None = None) -> None:
    """The edge-infer console script. Never returns: exits with the CLI's exit code."""
    args = sys.argv[1:] if args is None else list(args)
    try:
        if args[:1] == ["serve"]:  # `edge-infer serve ...`; a file named serve: `edge-infer ./serve`
            from edge_infer.serve import main as serve

            serve(args[1:])
        elif args and all(arg == "-" or not arg.startswith("-") for arg in args):
            run(args, Options())  # only paths: the common case needs no option parser
        else:
            _command().main(args, prog_name=PROG)
        code: object = 0
    except SystemExit as done:
        code = done.code
    except KeyboardInterrupt:  # Ctrl-C: what was printed stays printed, no traceback
        sys.stderr.write(f"{PROG}: interrupted\n")
        code = 130
    _exit_now(code)


def _exit_now(code: object) -> None:
    """Flush and exit without the interpreter's teardown, which for onnxruntime and numpy costs about as much
    as classifying one image (everything is written and every worker process has ended by now)."""
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    import contextlib

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # a closed pipe (e.g. `| head`) or stream
            stream.flush()
    os._exit(code or 0)
