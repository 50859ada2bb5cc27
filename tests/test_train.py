"""train/: the model, the recipes, and edge-train's outputs on real MNIST subsets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from train.cli import main as edge_train  # noqa: E402
from train.model import CELLS, DigitRNN, ModelConfig  # noqa: E402
from train.trainer import PRESETS, build_optimizer, load_checkpoint  # noqa: E402

from .conftest import ROOT, SMALL_RUN_ARGS, copy_file, edge_train_run  # noqa: E402

HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"}


def run_train(*args: str):
    result = CliRunner().invoke(edge_train, [*args, "--quiet"], catch_exceptions=False)
    return result


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_model_shapes_both_layouts(cell, layers):
    config = ModelConfig(cell, 16, layers)
    batch_first, time_major = DigitRNN(config, batch_first=True), DigitRNN(config, batch_first=False)
    time_major.load_state_dict(batch_first.state_dict())  # one state_dict serves both layouts
    images = torch.rand(5, 28, 28)
    logits = batch_first(images)
    assert logits.shape == (5, 10)
    assert torch.allclose(time_major(images.transpose(0, 1)), logits, atol=1e-6)


def test_reference_architecture_is_the_seed():
    model = DigitRNN(ModelConfig())
    assert isinstance(model.rnn, torch.nn.RNN) and model.rnn.nonlinearity == "relu"
    assert (model.rnn.input_size, model.rnn.hidden_size, model.rnn.num_layers) == (28, 128, 1)
    assert (model.fc.in_features, model.fc.out_features) == (128, 10)


@pytest.mark.slow
def test_seed_preset_is_the_notebook_recipe(tmp_path, data_root):
    seed = PRESETS["seed"]
    assert (seed.optimizer, seed.lr, seed.batch_size, seed.epochs) == ("rmsprop", 3e-4, 64, 30)
    assert not (seed.one_cycle or seed.identity_init or seed.augment or seed.clip_grad_norm or seed.weight_decay)
    optimizer, scheduler = build_optimizer(DigitRNN(ModelConfig()), seed, steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.RMSprop) and optimizer.param_groups[0]["lr"] == 3e-4
    for _ in range(25):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == [3e-4]  # a constant learning rate

    out = tmp_path / "seed"
    result = run_train(
        "--preset",
        "seed",
        "--epochs",
        "1",
        "--limit-train",
        "640",
        "--data-dir",
        str(data_root),
        "--no-download",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["recipe"] == {**seed.__dict__, "epochs": 1}
    assert "square_avg" in next(iter(state["optimizer"]["state"].values()))  # RMSprop's state
    assert len(state["optimizer"]["state"]) == 6  # rnn W_ih, W_hh, b_ih, b_hh; fc weight, bias
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 1


@pytest.mark.slow
def test_short_run_learns_and_writes_its_files(reference_run):
    out = reference_run
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "history.json",
        "model.txt",
        "report.json",
        "report.png",
    ]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    # Held-out accuracy on all 10,000 test images, far above chance (10 %).
    assert history[-1]["test_acc"] > 0.75
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.slow
def test_history_schema(reference_run):
    out = reference_run
    history = json.loads((out / "history.json").read_text())
    assert isinstance(history, list) and [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        assert h.keys() >= HISTORY_KEYS
        assert all(isinstance(h[k], float) for k in HISTORY_KEYS - {"epoch"})
        assert 0.0 <= h["train_acc"] <= 1.0 and 0.0 <= h["test_acc"] <= 1.0
        assert h["train_loss"] > 0 and h["test_loss"] > 0
    seconds = [h["seconds"] for h in history]
    assert seconds == sorted(seconds) and seconds[0] > 0  # cumulative
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 3 and state["test_acc"] == history[-1]["test_acc"]


@pytest.mark.slow
def test_same_seed_same_history(small_run, tmp_path, data_root):
    again = edge_train_run(SMALL_RUN_ARGS, tmp_path / "again", data_root)
    assert without_time(json.loads((again / "history.json").read_text())) == without_time(
        json.loads((small_run / "history.json").read_text())
    )


@pytest.mark.slow
def test_resume_at_next_epoch_matches_uninterrupted(tmp_path, data_root):
    common = [
        "--preset",
        "seed",
        "--limit-train",
        "1200",
        "--hidden",
        "16",
        "--data-dir",
        str(data_root),
        "--no-download",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_train(*common, "--epochs", "3", "--out", str(straight)).exit_code == 0
    assert run_train(*common, "--epochs", "2", "--out", str(split)).exit_code == 0
    result = CliRunner().invoke(
        edge_train,
        ["--resume", "--epochs", "3", "--out", str(split), "--data-dir", str(data_root), "--no-download"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "epoch  3/3" in result.output and "epoch  1/3" not in result.output  # continued at epoch 3
    expected = json.loads((straight / "history.json").read_text())
    assert without_time(json.loads((split / "history.json").read_text())) == without_time(expected)


@pytest.mark.slow
def test_ctrl_c_saves_checkpoint_and_resume_is_exact(small_run, tmp_path, data_root):
    """SIGINT mid-run: exit 130, a checkpoint at the current batch; --resume ends where a straight run (the
    session's small run, same arguments) does."""
    common = [*SMALL_RUN_ARGS, "--data-dir", str(data_root), "--no-download"]
    straight, interrupted = small_run, tmp_path / "interrupted"
    epochs = int(SMALL_RUN_ARGS[SMALL_RUN_ARGS.index("--epochs") + 1])

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *common, "--out", str(interrupted)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (interrupted / "history.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for epoch 1 to finish, then interrupt epoch 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; saved" in err and "--resume" in err and "Traceback" not in err
    assert len(json.loads((interrupted / "history.json").read_text())) < epochs  # it really stopped early

    result = run_train(
        "--resume",
        "--out",
        str(interrupted),
        "--data-dir",
        str(data_root),
        "--no-download",
        "--limit-train",
        SMALL_RUN_ARGS[SMALL_RUN_ARGS.index("--limit-train") + 1],
    )
    assert result.exit_code == 0, result.output
    assert without_time(json.loads((interrupted / "history.json").read_text())) == without_time(
        json.loads((straight / "history.json").read_text())
    )


def test_no_data_offline_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(
        edge_train, ["--data-dir", str(tmp_path / "nothing"), "--no-download", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "train-images-idx3-ubyte" in lines[0] and "--no-download" in lines[0] and "--data-dir" in lines[0]
    assert not (tmp_path / "run").exists()


def test_diverging_loss_stops_clearly(tmp_path, data_root):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        edge_train,
        [
            "--lr",
            "1e12",
            "--limit-train",
            "2000",
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--data-dir",
            str(data_root),
            "--no-download",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "loss became" in result.output and "Traceback" not in result.output
    assert not (out / "checkpoint.pt").exists()  # nothing bad was saved


@pytest.mark.slow
def test_existing_run_is_not_overwritten(reference_run, tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    copy_file(reference_run / "checkpoint.pt", out)
    before = (out / "checkpoint.pt").read_bytes()
    result = CliRunner().invoke(edge_train, ["--data-dir", str(data_root), "--no-download", "--out", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (out / "checkpoint.pt").read_bytes() == before


def test_out_that_is_a_file_is_one_line(tmp_path, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(
        edge_train,
        [
            "--out",
            str(blocker / "run"),
            "--data-dir",
            str(data_root),
            "--no-download",
            "--limit-train",
            "100",
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 2 and "cannot create the run directory" in result.output
    assert "Traceback" not in result.output
