"""edge-export: a thin command-line shell over export.export."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from export.graph import FORMS, OPSET, OPSETS


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"edge-export: error: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="fp32 model to write.")
@click.option("--int8", "int8_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a dynamically quantized int8 model here.")
@click.option("--opset", type=click.IntRange(OPSETS[0], OPSETS[-1]), default=OPSET, show_default=True,
              help="ONNX opset; the IR version follows it (17: onnxruntime >= 1.16).")
@click.option("--form", type=click.Choice(FORMS), default="auto", show_default=True,
              help="fp32 graph form: 'auto' (the fastest form for small batches and per-step for large ones, "
                   "chosen by an If node), 'per-step' (fastest from batch 64 on), 'hoisted' or 'node' (one ONNX "
                   "RNN/GRU/LSTM node per layer); see export/graph.py.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="MNIST for the parity and accuracy checks (torchvision layout: DIR/MNIST/raw/).")
@click.option("--no-download", is_flag=True, help="Never download MNIST; fail if it is missing.")
def main(checkpoint, out, int8_out, opset, form, data_dir, no_download) -> None:
    """Export an edge-train CHECKPOINT to ONNX, after checking parity with torch on real MNIST images."""
    from export.export import CheckpointError, ExportError, export
    from train.data import DataError, load_mnist

    if not checkpoint.is_file():
        _fail(f"no checkpoint at {checkpoint}")
    for path in (out, int8_out):
        if path is not None and path.is_dir():
            _fail(f"{path} is a directory; give the .onnx file to write")
    try:
        _, test = load_mnist(data_dir, download=not no_download)
        report = export(checkpoint, out, test, int8_out=int8_out, opset=opset, form=form)
    except (DataError, CheckpointError) as error:  # unusable input
        _fail(str(error), code=2)
    except ExportError as error:  # a check failed
        _fail(str(error), code=1)
    except OSError as error:  # e.g. no permission to write there
        _fail(f"cannot write the model: {error.strerror or error} ({error.filename or out})", code=1)
    click.echo(report.summary())
