"""edge-infer: classify digit images from files, directories or stdin. A thin shell over Classifier.

Exit codes: 0 every image classified, 1 some input failed (the rest are still printed), 2 usage error.
"""
from __future__ import annotations

import itertools
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
CHUNK = 1024  # images per session.run
PARALLEL_FROM = 256  # decode in worker processes from this many images on (fork costs a few ms)


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
        return str(error).replace(f": {path}", "").replace(f"{path}: ", "")  # the path is printed anyway
    except Exception as error:  # a decoder bug must not take the rest of the batch down
        return f"unexpected {type(error).__name__}: {' '.join(str(error).split())[:200]}"


def load_digits(paths: list[str], stdin: bytes | None, jobs: int) -> Iterator[np.ndarray | str]:
    """load_digit for every path, in order; decoded by `jobs` worker processes when there are many."""
    if jobs > 1 and len(paths) >= PARALLEL_FROM and "-" not in paths and hasattr(os, "fork"):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:  # one pool for the whole run
            yield from pool.imap(load_digit, paths, chunksize=64)
    else:
        for path in paths:
            yield load_digit(path, stdin)


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
    ranked = prediction.top_k(top_k)
    extra = "".join(f"\t{d}:{p:.4f}" for d, p in ranked[1:])
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
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="An .onnx model from edge-export "
              "(default: the bundled one).")
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
    try:
        classifier = Classifier(model, int8=int8, threads=threads, provider=provider)
    except ModelError as error:
        _die(str(error))
    if info:
        _print_info(classifier, as_json)
        if not paths:
            return

    stdin = sys.stdin.buffer.read() if "-" in paths else None
    jobs = jobs or usable_cpus()
    inputs = list(expand(paths))
    loaded = load_digits([path for path, error in inputs if error is None], stdin, jobs)
    # (path, error message or preprocessed digit) for every input, in input order
    results = ((path, error if error is not None else next(loaded)) for path, error in inputs)
    failed = False
    try:
        while chunk := list(itertools.islice(results, CHUNK)):
            digits = [r for _, r in chunk if isinstance(r, np.ndarray)]
            predictions = iter(classifier.classify(np.stack(digits)) if digits else [])
            lines = []
            for path, result in chunk:
                if isinstance(result, str):
                    failed = True
                    click.echo(f"edge-infer: {path}: {result}", err=True)
                    if as_json:
                        lines.append(json.dumps({"path": path, "error": result}))
                else:
                    lines.append(format_line(path, next(predictions), top_k, as_json))
            if lines:
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    sys.exit(1 if failed else 0)
