"""edge-infer: classify digit images from files, directories or stdin. A thin shell over Classifier.

Exit codes: 0 every image classified, 1 some input failed (the rest are still printed), 2 usage error.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Iterator

import click
import numpy as np

from edge_infer.classifier import Classifier, ModelError, Prediction, usable_cpus
from edge_infer.preprocess import ImageError, preprocess

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                            ".pbm", ".pnm", ".ico", ".tga"})
CHUNK = 256  # images per session.run, and per task of a worker process
PARALLEL_FROM = 256  # use worker processes from this many images on (starting them costs ~20 ms)


def _die(message: str) -> None:
    click.echo(f"edge-infer: error: {message}", err=True)
    sys.exit(2)


def expand(paths: tuple[str, ...]) -> Iterator[tuple[str, str | None]]:
    """(display path, error or None) for every input: files as given, directories walked recursively
    (image files only, sorted), '-' for stdin."""
    for path in paths:
        if path == "-" or os.path.isfile(path):
            yield path, None
        elif os.path.isdir(path):
            found = False
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                        found = True
                        yield os.path.join(root, name), None
            if not found:
                yield path, "directory holds no image files"
        elif os.path.exists(path):
            yield path, "not a regular file"
        else:
            yield path, "no such file or directory"


def load_digit(path: str, stdin: bytes | None = None) -> np.ndarray | str:
    """The preprocessed digit, or a one-line error message."""
    try:
        return preprocess(stdin if path == "-" else path)
    except ImageError as error:
        # the path is printed beside the message anyway (stdin's bytes are named "image bytes")
        name = "image bytes" if path == "-" else path
        return str(error).replace(f": {name}", "").replace(f"{name}: ", "")
    except Exception as error:  # a decoder bug must not take the rest of the batch down
        return f"unexpected {type(error).__name__}: {' '.join(str(error).split())[:200]}"


def classify_paths(classifier: Classifier, paths: list[str], stdin: bytes | None = None
                   ) -> list[Prediction | str]:
    """A prediction or a one-line error for each path, with one session.run for them all."""
    loaded = [load_digit(path, stdin) for path in paths]
    digits = [d for d in loaded if not isinstance(d, str)]
    predictions = iter(classifier.classify(np.stack(digits)) if digits else [])
    return [result if isinstance(result, str) else next(predictions) for result in loaded]


_worker_classifier: Classifier | None = None


def _start_worker(options: dict) -> None:
    global _worker_classifier
    _worker_classifier = Classifier(**options)  # its own session: onnxruntime's don't survive a fork


def _classify_in_worker(paths: list[str]) -> list[Prediction | str]:
    return classify_paths(_worker_classifier, paths)


def classify_all(paths: list[str], stdin: bytes | None, classifier: Classifier, options: dict, jobs: int
                 ) -> Iterator[Prediction | str]:
    """classify_paths over all paths, in order, CHUNK at a time. Many images are decoded and classified
    by `jobs` worker processes, which send back only the predictions."""
    chunks = [paths[start:start + CHUNK] for start in range(0, len(paths), CHUNK)]
    if jobs > 1 and len(paths) >= PARALLEL_FROM and stdin is None and hasattr(os, "fork"):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(min(jobs, len(chunks)), _start_worker, (options,)) as pool:
            for results in pool.imap(_classify_in_worker, chunks):
                yield from results
    else:
        for chunk in chunks:
            yield from classify_paths(classifier, chunk, stdin)


def format_line(path: str, prediction: Prediction, top_k: int, as_json: bool) -> str:
    if as_json:
        record = {"path": path, "label": prediction.label if prediction.digit_found else None,
                  "confidence": round(prediction.confidence, 6),
                  "probabilities": [round(float(p), 6) for p in prediction.probabilities]}
        if not prediction.digit_found:
            record["no_digit"] = True
        if top_k > 1:
            record["top_k"] = [[d, round(p, 6)] for d, p in prediction.top_k(top_k)]
        return json.dumps(record)
    if not prediction.digit_found:
        return f"{path}\t-\t0.0000"
    extra = "".join(f"\t{d}:{p:.4f}" for d, p in prediction.top_k(top_k)[1:]) if top_k > 1 else ""
    return f"{path}\t{prediction.label}\t{prediction.confidence:.4f}{extra}"


def _print_info(classifier: Classifier, as_json: bool) -> None:
    info = {"source": classifier.source, **asdict(classifier.info)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        for key, value in info.items():
            click.echo(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: path, label, confidence, probabilities.")
@click.option("--top-k", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Also print the next most likely digits.")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="An .onnx (or .ort) model from "
              "edge-export (default: the bundled one).")
@click.option("--int8", is_flag=True, help="Use the bundled int8 model.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="onnxruntime intra-op threads (decoding, in --jobs processes, is the larger cost).")
@click.option("--provider", default=None, help="onnxruntime execution provider (default CPUExecutionProvider).")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="Processes decoding images for large batches (default: one per CPU core).")
@click.option("--info", is_flag=True, help="Print the model's metadata and exit.")
@click.version_option(package_name="edge-infer")
def main(paths, as_json, top_k, model, int8, threads, provider, jobs, info) -> None:
    """Classify handwritten or printed digits in PATH... (image files, directories, or - for stdin).

    Prints one line per image: path, digit, confidence (tab-separated); '-' for the digit when the image
    holds none.
    """
    if not paths and not info:
        _die("no input: give image files, directories, or - for stdin (see --help)")
    if paths.count("-") > 1:
        _die("stdin ('-') can be read only once")
    if int8 and model:
        _die("--int8 selects the bundled int8 model; with --model, pass your int8 file itself")
    options = {"model": model, "int8": int8, "threads": threads, "provider": provider}
    try:
        classifier = Classifier(**options)
    except ModelError as error:
        _die(str(error))
    if info:
        _print_info(classifier, as_json)
        if not paths:
            return

    stdin = sys.stdin.buffer.read() if "-" in paths else None
    jobs = jobs or usable_cpus()
    inputs = list(expand(paths))
    predicted = classify_all([path for path, error in inputs if error is None], stdin, classifier, options, jobs)
    failed = False
    lines: list[str] = []
    try:
        for index, (path, error) in enumerate(inputs, 1):
            result = error if error is not None else next(predicted)
            if isinstance(result, str):
                failed = True
                click.echo(f"edge-infer: {path}: {result}", err=True)
                if as_json:
                    lines.append(json.dumps({"path": path, "error": result}))
            else:
                lines.append(format_line(path, result, top_k, as_json))
            if lines and (index % CHUNK == 0 or index == len(inputs)):
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
                lines.clear()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    sys.exit(1 if failed else 0)
