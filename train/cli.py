"""edge-train: a thin command-line shell over train.trainer."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from train import CELLS, DEFAULT_THREADS
from train.cli_util import OneLineCommand, fail

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _fail(message: str, code: int = 2) -> None:
    fail("edge-train", message, code)


@click.command(cls=OneLineCommand, name="edge-train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--preset",
    type=click.Choice(["default", "seed"]),
    default="default",
    show_default=True,
    help="Training recipe: 'seed' is the reference notebook exactly; 'default' is fast on a CPU and trained for "
    "real-world digits (synthetic pool, UNIPEN pen data, calibration; gru/lstm: a higher learning rate and 12 "
    "epochs).",
)
@click.option("--cell", type=click.Choice(CELLS), default="rnn", show_default=True)
@click.option("--hidden", type=click.IntRange(1), default=128, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=1, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the recipe's epoch count.")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Override the recipe's learning rate."
)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Override the recipe's batch size.")
@click.option("--augment/--no-augment", default=None, help="Override the recipe's augmentation.")
@click.option(
    "--synthetic",
    type=click.FloatRange(min=0),
    default=None,
    help="Override the recipe's synthetic digits per MNIST training image (0: none).",
)
@click.option(
    "--unipen",
    type=click.FloatRange(min=0),
    default=None,
    help="Override the recipe's renderings per UNIPEN training digit (0: no UNIPEN; it is read from "
    "DATA_DIR/unipen/unipen-1a-digits.npz).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where MNIST lives: the folder holding its four IDX files, or one above it (DIR/raw/, "
    "DIR/MNIST/raw/); downloaded into DIR/MNIST/raw/ if missing. UNIPEN is read from DIR/unipen/ (never "
    "downloaded). Default ./data; with --resume, the run's own.",
)
@click.option("--no-download", is_flag=True, help="Never download MNIST; fail if it is missing.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (default runs/<timestamp>).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--limit-train", type=click.IntRange(1), default=None, help="Train on the first N training images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Makes a CPU run repeatable.")
@click.option(
    "--threads",
    type=click.IntRange(1, CORES),
    default=None,
    help=f"CPU threads for torch (default {DEFAULT_THREADS}: fastest for this model, and steady on a busy "
    "machine; with --resume, the run's own). Runs are repeatable for the same --seed and --threads.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-epoch lines.")
@click.option(
    "--report",
    "report_only",
    is_flag=True,
    help="Only redraw report.png (and report.json) of the finished run in --out; no training.",
)
def main(**options) -> None:  # click passes every option by name
    """Train the row-by-row RNN digit classifier on MNIST.

    Writes checkpoint.pt, history.json, curves.png, model.txt and report.png (where the model errs on
    MNIST test) into the run directory.
    """
    try:
        _main(**options)
    except KeyboardInterrupt:  # Ctrl-C during start-up (importing torch, loading MNIST): nothing written yet
        click.echo("edge-train: interrupted before training started; nothing was written", err=True)
        sys.exit(130)


def _main(
    preset,
    cell,
    hidden,
    layers,
    epochs,
    lr,
    batch_size,
    augment,
    synthetic,
    unipen,
    data_dir,
    no_download,
    out_dir,
    resume,
    limit_train,
    seed,
    threads,
    device,
    quiet,
    report_only,
) -> None:
    import torch

    from train.data import DataError, load_mnist
    from train.model import ModelConfig
    from train.report import EMA_NOTE, MODEL_TXT, load_run_model, model_summary, recipe_text, write_report
    from train.trainer import Interrupted, Trainer, TrainingDiverged, load_checkpoint, preset_recipe

    if (resume or report_only) and out_dir is None:
        _fail(f"--{'resume' if resume else 'report'} needs --out DIR (the run to continue or report on)")
    state = None
    if resume or report_only:
        try:
            state = load_checkpoint(out_dir / "checkpoint.pt")
        except ValueError as error:
            _fail(str(error))
        if data_dir is None and isinstance(state.get("data_dir"), str):
            data_dir = Path(state["data_dir"])  # where the run found MNIST: resuming and reports work offline
    data_dir = data_dir or Path("data")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is available")
    out_dir = out_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if report_only:
        try:
            model = load_run_model(out_dir / "checkpoint.pt")
            report = write_report(out_dir, model.to(device), load_mnist(data_dir, download=not no_download)[1], device)
        except (ValueError, DataError) as error:
            _fail(str(error))
        except OSError as error:
            _fail(f"cannot write the report into {out_dir}: {error.strerror or error}", code=1)
        click.echo(f"report: {out_dir / 'report.png'} (MNIST test accuracy {report.accuracy:.2%})")
        return
    if not resume and (out_dir / "checkpoint.pt").exists():
        _fail(f"{out_dir} already holds a run; use --resume to continue it, or another --out")

    try:
        train_split, test_split = load_mnist(data_dir, download=not no_download)
    except DataError as error:
        _fail(str(error))
    if limit_train and not resume:
        train_split = train_split.head(limit_train)

    log = (lambda line: None) if quiet else click.echo
    try:
        if resume:
            trainer = Trainer.resume(
                out_dir,
                train_split,
                test_split,
                device=device,
                limit_train=limit_train,
                threads=threads,
                state=state,
                log=log,
                progress_bar=not quiet,
            )
        else:
            recipe = preset_recipe(preset, cell)
            overrides = {
                "epochs": epochs,
                "lr": lr,
                "batch_size": batch_size,
                "augment": augment,
                "synthetic": synthetic,
                "unipen": unipen,
            }
            recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
            trainer = Trainer(
                out_dir,
                ModelConfig(cell, hidden, layers),
                recipe,
                train_split,
                test_split,
                seed=seed,
                device=device,
                log=log,
                progress_bar=not quiet,
                threads=threads or DEFAULT_THREADS,
                data_dir=data_dir,
            )
    except (ValueError, DataError) as error:
        _fail(str(error))
    if resume and epochs is not None:
        if trainer.recipe.one_cycle and epochs != trainer.recipe.epochs:
            _fail(
                "this run's one-cycle schedule was planned for "
                f"{trainer.recipe.epochs} epochs; it cannot be resumed with a different --epochs"
            )
        trainer.recipe = replace(trainer.recipe, epochs=epochs)

    _check_writable(out_dir)
    log(
        f"training {trainer.config.cell}-{trainer.config.hidden}x{trainer.config.layers} on {trainer.mix_text()} "
        f"({device}, --threads {trainer.threads}) into {out_dir}\nrecipe: "
        f"{recipe_text(trainer.recipe, trainer.config.cell)}"
    )
    if trainer.recipe.ema_decay:
        log(EMA_NOTE)
    try:
        (out_dir / MODEL_TXT).write_text(model_summary(trainer.model))
        history = trainer.fit()
    except KeyboardInterrupt as interrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # another Ctrl-C must not cut the message short
        try:
            saved = trainer.saved()  # read back from the file: what is on disk, whatever was written just now
            again = f"continue with: edge-train --resume --out {shlex.quote(str(out_dir))}"
            if isinstance(interrupt, Interrupted):
                message = f"interrupted; saved the checkpoint: {saved}; {again}"
            else:
                message = f"stopped at once by Ctrl-C; {saved}" + ("" if "no checkpoint" in saved else f"; {again}")
            click.echo(f"edge-train: {message}", err=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        sys.exit(130)
    except TrainingDiverged as error:
        _fail(str(error), code=1)
    except OSError as error:  # e.g. the disk filled up while writing a checkpoint
        _fail(f"cannot write to {out_dir}: {error.strerror or error}; {trainer.saved()}", code=1)
    try:
        write_report(out_dir, trainer.final_model, test_split, device)
    except OSError as error:
        _fail(f"cannot write the report into {out_dir}: {error.strerror or error}", code=1)
    if history:
        last = history[-1]
        click.echo(
            f"done: test accuracy {last['test_acc']:.2%} after {last['epoch']} epochs, "
            f"{last['seconds']:.1f}s of training; checkpoint {trainer.checkpoint_path}"
        )


def _check_writable(out_dir: Path) -> None:
    """Fail now, not after an epoch of training, when the run directory cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail(f"cannot create the run directory {out_dir}: {error.strerror or error}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".checkpoint.pt.", dir=out_dir)  # as the checkpoint will be written
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        _fail(f"cannot write to the run directory {out_dir}: {error.strerror or error}")
