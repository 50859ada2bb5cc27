"""edge-export: a thin command-line shell over export.export."""

from __future__ import annotations

from pathlib import Path

import click

from export.graph import FORMS, OPSET, OPSETS
from train.cli_util import OneLineCommand, fail


def _fail(message: str, code: int = 2) -> None:
    fail("edge-export", message, code)


@click.command(cls=OneLineCommand, name="edge-export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="fp32 model to write.")
@click.option(
    "--int8",
    "int8_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a dynamically quantized int8 model here.",
)
@click.option(
    "--int8-static",
    "int8_static_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a static int8 model (QDQ, calibrated on MNIST training images) here: the form NPU "
    "and accelerator execution providers take.",
)
@click.option(
    "--ort",
    is_flag=True,
    help="Also write each model in ORT format (.ort beside the .onnx) with the "
    "operator list a reduced-size onnxruntime build needs (.required_operators.config).",
)
@click.option(
    "--opset",
    type=click.IntRange(OPSETS[0], OPSETS[-1]),
    default=OPSET,
    show_default=True,
    help="ONNX opset; the IR version follows it (17: onnxruntime >= 1.16).",
)
@click.option(
    "--form",
    type=click.Choice(FORMS),
    default="auto",
    show_default=True,
    help="fp32 graph form: 'auto' (the fastest form for small batches and per-step for large ones, "
    "chosen by an If node), 'per-step' (fastest from batch 64 on), 'hoisted' or 'node' (one ONNX "
    "RNN/GRU/LSTM node per layer); see export/graph.py.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="MNIST for the parity and accuracy checks (torchvision layout: DIR/MNIST/raw/).",
)
@click.option("--no-download", is_flag=True, help="Never download MNIST; fail if it is missing.")
@click.option(
    "--graph",
    "graph_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the exported graph into FILE (.svg or .png); with --int8, the int8 graph goes to "
    "FILE-int8.svg/.png.",
)
def main(checkpoint, out, int8_out, int8_static_out, ort, opset, form, data_dir, no_download, graph_file) -> None:
    """Export an edge-train CHECKPOINT to ONNX, after checking parity with torch on real MNIST images."""
    from export.export import CheckpointError, ExportError, IncompleteExport, export, load_trained
    from train.data import DataError, load_mnist

    if not checkpoint.is_file():
        _fail(f"no checkpoint at {checkpoint}")
    for path in (out, int8_out, int8_static_out, graph_file):
        if path is not None and path.is_dir():
            _fail(f"{path} is a directory; give the file to write")
    if graph_file is not None and graph_file.suffix.lower() not in (".svg", ".png"):
        _fail(f"--graph {graph_file}: the picture must be a .svg or .png file")
    try:
        load_trained(checkpoint)  # "not a checkpoint" before MNIST is looked for (or downloaded)
        train, test = load_mnist(data_dir, download=not no_download)
        report = export(
            checkpoint,
            out,
            test,
            int8_out=int8_out,
            opset=opset,
            form=form,
            int8_static_out=int8_static_out,
            train=train,
            ort=ort,
        )
    except (DataError, CheckpointError) as error:  # unusable input
        _fail(str(error), code=2)
    except IncompleteExport as error:  # fp32 (and what else passed) written; the failed formats not
        click.echo(error.report.summary())
        _fail(str(error), code=1)
    except ExportError as error:  # a check failed
        _fail(str(error), code=1)
    except OSError as error:  # e.g. no permission to write there
        _fail(f"cannot write the model: {error.strerror or error} ({error.filename or out})", code=1)
    click.echo(report.summary())
    if graph_file is not None:
        _draw_graphs(graph_file, out, int8_out)


def _draw_graphs(graph_file: Path, out: Path, int8_out: Path | None) -> None:
    from edge_infer.draw_graph import draw, summarize
    from edge_infer.files import FileRefused
    from edge_infer.onnx_graph import read_model

    pictures = [(out, graph_file)]
    if int8_out is not None:
        pictures.append((int8_out, graph_file.with_name(f"{graph_file.stem}-int8{graph_file.suffix}")))
    for model, picture in pictures:
        try:
            draw(summarize(read_model(model.read_bytes())), picture)
        except OSError as error:
            _fail(f"cannot write the graph picture {picture}: {error.strerror or error}", code=1)
        except FileRefused as error:  # e.g. a FIFO or a directory there: never written through
            _fail(f"cannot write the graph picture {picture}: {error}", code=1)
        click.echo(f"graph: {picture}")
