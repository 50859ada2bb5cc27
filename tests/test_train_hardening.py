"""edge-train / edge-export under faults: kills, Ctrl-C, malformed checkpoints, full disks, read-only or offline
places, bad options and NaN weights. Each reproduces the fault for real (signals, resource limits, another
user id, an unreachable proxy) and asserts one true line, the right exit code and nothing lost."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from export.cli import main as edge_export  # noqa: E402
from train.cli import main as edge_train  # noqa: E402
from train.data import DataError, load_mnist  # noqa: E402
from train.model import ModelConfig  # noqa: E402
from train.trainer import PRESETS, RESUME_KEYS, Trainer, load_checkpoint  # noqa: E402

from .conftest import ROOT, obey_permission_bits, train_small  # noqa: E402

TINY = ["--limit-train", "600", "--hidden", "8", "--no-download", "--quiet"]
OFFLINE = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}  # every download: connection refused


def child_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def saved_position(path: Path) -> tuple[int, int]:
    progress = load_checkpoint(path)["progress"]
    return progress["epoch"], progress["batch"]


def names_position(message: str, path: Path) -> bool:
    """Whether message names exactly the position the checkpoint on disk holds."""
    epoch, batch = saved_position(path)
    if batch == 0:
        return f"the end of epoch {epoch}" in message
    return re.search(rf"epoch {epoch + 1}, batch {batch} of \d+", message) is not None


# -- the checkpoint and the history are one unit ---------------------------------------------------------------


def test_history_is_rewritten_from_the_checkpoint_on_resume(tmp_path, data_root):
    """Killed between renaming checkpoint.pt and history.json: the checkpoint holds 2 epochs, the history 1.
    --resume (nothing left to train) puts history.json right instead of saying 'done' over it."""
    out = tmp_path / "run"
    assert (
        CliRunner()
        .invoke(edge_train, [*TINY, "--epochs", "2", "--data-dir", str(data_root), "--out", str(out)])
        .exit_code
        == 0
    )
    full = json.loads((out / "history.json").read_text())
    (out / "history.json").write_text(json.dumps(full[:1]))  # the file state such a kill leaves
    result = CliRunner().invoke(edge_train, ["--resume", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (
        json.loads((out / "history.json").read_text())
        == full
        == load_checkpoint(out / "checkpoint.pt")["progress"]["history"]
    )


def test_temporaries_of_a_killed_run_are_removed_at_start(tmp_path, data_root):
    out = tmp_path / "run"
    assert (
        CliRunner()
        .invoke(edge_train, [*TINY, "--epochs", "1", "--data-dir", str(data_root), "--out", str(out)])
        .exit_code
        == 0
    )
    leftovers = [out / ".checkpoint.pt.k3j2x9_a", out / ".history.json.0f8s_d1q", out / ".curves.png.zz81nq0w"]
    for path in leftovers:
        path.write_bytes(b"half-written")
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(edge_train, ["--resume", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in leftovers)
    assert (out / "notes.txt").read_text() == "mine"


# -- every message about what was saved is true ----------------------------------------------------------------


def test_second_ctrl_c_during_the_save_does_not_claim_a_save(tmp_path, data_root, monkeypatch):
    """A first Ctrl-C mid-epoch (a real SIGINT), a second one while the interrupt checkpoint is written: the
    message must not say 'saved', and must name what the checkpoint on disk really holds."""
    out = tmp_path / "run"
    first_sent = threading.Event()
    real_save = torch.save

    def save_with_second_ctrl_c(obj, f, *args, **kwargs):
        if first_sent.is_set():
            os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread, inside this write
        return real_save(obj, f, *args, **kwargs)

    def first_ctrl_c_after_epoch_1() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if json.loads((out / "history.json").read_text()):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        first_sent.set()
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(torch, "save", save_with_second_ctrl_c)
    watcher = threading.Thread(target=first_ctrl_c_after_epoch_1, daemon=True)
    watcher.start()
    result = CliRunner().invoke(
        edge_train,
        [
            "--limit-train",
            "6000",
            "--hidden",
            "16",
            "--epochs",
            "40",
            "--no-download",
            "--quiet",
            "--data-dir",
            str(data_root),
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    watcher.join()
    message = one_line(result.output)
    assert result.exit_code == 130, message
    assert "saved the checkpoint" not in message and message.startswith("edge-train: stopped at once by Ctrl-C;")
    assert names_position(message, out / "checkpoint.pt"), message
    assert not list(out.glob(".checkpoint.pt.*"))


def test_ctrl_c_message_names_the_saved_batch_and_its_resume_hint_works_offline(tmp_path, data_root):
    """The Ctrl-C line names the batch in the checkpoint on disk, and its `continue with:` command works
    exactly as printed, from another directory, with no network (the checkpoint remembers --data-dir)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            "--limit-train",
            "6000",
            "--hidden",
            "16",
            "--epochs",
            "3",
            "--no-download",
            "--quiet",
            "--data-dir",
            str(data_root),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "history.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 1's batches (or later)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    message = one_line(err)
    assert proc.returncode == 130 and "interrupted; saved the checkpoint" in message, message
    assert names_position(message, out / "checkpoint.pt"), message

    command = shlex.split(message.split("continue with: ", 1)[1])
    assert command[:2] == ["edge-train", "--resume"]
    elsewhere = tmp_path / "elsewhere"  # no ./data here, and downloads are refused
    elsewhere.mkdir()
    resumed = subprocess.run(
        [sys.executable, "-m", "train", *command[1:]],
        cwd=elsewhere,
        env=child_env(**OFFLINE),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads((out / "history.json").read_text())) == 3


def test_ctrl_c_during_start_up_is_one_line(tmp_path, data_root):
    """SIGINT while edge-train is still importing torch: one line and exit 130, no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            *TINY,
            "--epochs",
            "1",
            "--data-dir",
            str(data_root),
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        proc.kill()
        pytest.skip("needs /proc to see when torch starts loading")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "libtorch" not in maps.read_text(errors="replace"):
        time.sleep(0.002)  # torch's libraries are being mapped: we are inside `import torch`
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted before training started" in one_line(err)
    assert not (tmp_path / "run").exists()


# -- malformed checkpoints and full disks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mid_run_checkpoint(tmp_path_factory, mnist) -> Path:
    """A real checkpoint of the default recipe after epoch 1 of 2 (so that --resume has work to do)."""
    out = tmp_path_factory.mktemp("mid-run")

    def stop_after_epoch_1(line: str) -> None:
        raise KeyboardInterrupt  # called once epoch 1 is saved

    trainer = Trainer(
        out,
        ModelConfig("rnn", 8, 1),
        replace(PRESETS["default"], epochs=2, unipen=0.0),
        mnist[0].head(600),
        mnist[1],
        progress_bar=False,
        log=stop_after_epoch_1,
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    return out / "checkpoint.pt"


def _set(path: tuple, value):
    def mutate(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value(target.get(path[-1])) if callable(value) else value

    return mutate


MALFORMED = {
    **{f"lacks {key}": (_set((key,), KeyError), key) for key in RESUME_KEYS},
    "model_config extra field": (_set(("model_config", "dropout"), 0.1), "dropout"),
    "recipe extra field": (_set(("recipe", "warmup"), 3), "warmup"),
    "progress extra field": (_set(("progress", "lr"), 0.1), "lr"),
    "model extra tensor": (_set(("model", "fc.scale"), torch.ones(10)), "fc.scale"),
    "train_model extra tensor": (_set(("train_model", "fc.scale"), torch.ones(10)), "fc.scale"),
    "model lacks a tensor": (_set(("model", "fc.bias"), KeyError), "fc.bias"),
    "model wrong shape": (_set(("model", "rnn.weight_hh_l0"), torch.zeros(8, 9)), "rnn.weight_hh_l0"),
    "train_model wrong shape": (_set(("train_model", "fc.weight"), torch.zeros(9, 8)), "fc.weight"),
    "optimizer state wrong shape": (_set(("optimizer", "state", 0, "exp_avg"), torch.zeros(3)), "exp_avg"),
    "optimizer state lacks a tensor": (_set(("optimizer", "state", 1, "exp_avg_sq"), KeyError), "exp_avg_sq"),
    "optimizer lr a string": (_set(("optimizer", "param_groups", 0, "lr"), "fast"), "lr"),
    "optimizer state not a dict": (_set(("optimizer", "state"), [1, 2]), "optimizer.state"),
    "scheduler last_epoch a string": (_set(("scheduler", "last_epoch"), "x"), "last_epoch"),
    "model_config a string": (_set(("model_config",), "rnn"), "model_config"),
    "model_config bad cell": (_set(("model_config", "cell"), "transformer"), "transformer"),
    "recipe epochs a string": (_set(("recipe", "epochs"), "ten"), "epochs"),
    "recipe batch size 0": (_set(("recipe", "batch_size"), 0), "recipe"),
    "seed a string": (_set(("seed",), "0"), "seed"),
    "threads zero": (_set(("threads",), 0), "threads"),
    "progress batch past the epoch": (_set(("progress", "batch"), 10**6), "batch"),
    "progress epoch without history": (_set(("progress", "epoch"), 5), "history"),
    "progress history not a list": (_set(("progress", "history"), "none"), "history"),
    "progress history record damaged": (_set(("progress", "history"), [{"epoch": 1}]), "history"),
    "progress generator_state damaged": (
        _set(("progress", "generator_state"), torch.zeros(3, dtype=torch.uint8)),
        "generator_state",
    ),
    "progress seen wrong": (_set(("progress", "seen"), 7), "progress"),
}


def malformed_run(case: str, checkpoint: Path, tmp_path: Path) -> tuple[Path, str]:
    """A run directory holding the checkpoint damaged as MALFORMED[case] says, and the name the error must give."""
    mutate, named = MALFORMED[case]
    state = torch.load(checkpoint, weights_only=True)
    mutate(state)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(state, run / "checkpoint.pt")
    return run, named


@pytest.mark.parametrize("case", list(MALFORMED))
def test_resume_refuses_a_malformed_checkpoint_in_one_line(case, mid_run_checkpoint, mnist, tmp_path):
    run, named = malformed_run(case, mid_run_checkpoint, tmp_path)
    with pytest.raises(ValueError) as refused:
        Trainer.resume(run, mnist[0], mnist[1], progress_bar=False)
    message = str(refused.value)
    assert "\n" not in message and named in message, message


@pytest.mark.parametrize("case", ["lacks optimizer", "model wrong shape", "model_config extra field"])
def test_edge_train_resume_of_a_malformed_checkpoint_is_one_line_exit_2(case, mid_run_checkpoint, data_root, tmp_path):
    run, named = malformed_run(case, mid_run_checkpoint, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    result = CliRunner().invoke(
        edge_train,
        ["--resume", "--out", str(run), "--data-dir", str(data_root), "--no-download", "--quiet"],
        catch_exceptions=False,
    )
    line = one_line(result.output)
    assert result.exit_code == 2 and line.startswith("edge-train: error:") and named in line, line
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing lost


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_full_disk_during_a_checkpoint_write_is_one_line(tmp_path, data_root):
    """The disk fills up (here: a file-size limit, so writes fail as on a full disk) while the first
    checkpoint is written: one line, exit 1, no half-written file or temporary left."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "train", *TINY, "--epochs", "1", "--data-dir", str(data_root), "--out", str(out)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(8192),
    )
    line = one_line(result.stderr)
    assert result.returncode == 1, line
    assert line.startswith("edge-train: error: cannot write to") and "no checkpoint was saved" in line, line
    # the empty history, written at start, and the module summary (model.txt), written before training
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.txt"]
    assert json.loads((out / "history.json").read_text()) == []


def test_read_only_out_fails_before_training(tmp_path, data_root):
    """A run directory that exists but cannot be written: refused at once (exit 2), not after an epoch."""
    out = tmp_path / "run"
    out.mkdir()
    os.chmod(out, 0o555)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "train", *TINY, "--epochs", "3", "--data-dir", str(data_root), "--out", str(out)],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=obey_permission_bits,
        )
        line = one_line(result.stderr)
        assert result.returncode == 2 and "cannot write to the run directory" in line, line
        assert list(out.iterdir()) == []
    finally:
        os.chmod(out, 0o755)


# -- where MNIST is, and when it cannot be fetched -------------------------------------------------------------


@pytest.mark.parametrize("where", ["root", "MNIST", "MNIST/raw"])
def test_data_dir_may_name_the_folder_holding_the_files(where, data_root, mnist):
    folder = data_root if where == "root" else data_root / where
    train, test = load_mnist(folder, download=False)
    assert torch.equal(train.images, mnist[0].images) and torch.equal(test.labels, mnist[1].labels)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8


def test_data_dir_without_mnist_names_what_to_do(tmp_path):
    with pytest.raises(DataError) as missing:
        load_mnist(tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(missing.value) and "--data-dir" in str(missing.value)


def test_failed_download_is_one_whole_line_and_leaves_no_folders(tmp_path):
    data = tmp_path / "fresh"
    result = subprocess.run(
        [sys.executable, "-m", "train", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--quiet"],
        cwd=ROOT,
        env=child_env(**OFFLINE),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = one_line(result.stderr)
    assert result.returncode == 2, line
    assert line.startswith(f"edge-train: error: could not download MNIST into {data / 'MNIST' / 'raw'} (")
    reason = line.split(" (", 1)[1].rsplit(")", 1)[0]
    assert "refused" in reason and reason.count("<") == reason.count(">"), reason  # the error, whole
    assert "point --data-dir at the folder that holds them" in line and "by hand" not in line
    assert not data.exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_training_line_says_its_mix_and_report_finds_the_runs_data_offline(tmp_path, data_root):
    """`--limit-train 5000` printed "on 9000 images" (the synthetic twins and UNIPEN renderings unexplained);
    `edge-train --report --out DIR` ignored the run's remembered --data-dir and tried to download MNIST."""
    out = tmp_path / "run"
    args = ["--limit-train", "5000", "--epochs", "1", "--hidden", "8", "--no-download", "--seed", "0"]
    trained = subprocess.run(
        [sys.executable, "-m", "train", *args, "--data-dir", str(data_root), "--out", str(out)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    line = next(line for line in trained.stdout.splitlines() if line.startswith("training "))
    mix = re.search(
        r" on ([\d,]+) images: ([\d,]+) MNIST \+ ([\d,]+) synthetic \+ ([\d,]+) UNIPEN"
        r"; ([\d,]+) more MNIST held out for calibration \(cpu",
        line,
    )
    assert mix, line
    total, mnist, synthetic, unipen, held = (int(n.replace(",", "")) for n in mix.groups())
    assert (mnist, synthetic, held) == (4500, 4500, 500) and unipen > 0 and total == mnist + synthetic + unipen
    (out / "report.png").unlink()
    report = subprocess.run(  # from another directory, offline, without --data-dir or --no-download
        [sys.executable, "-m", "train", "--report", "--out", str(out)],
        cwd=tmp_path,
        env=child_env(**OFFLINE),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert (
        report.stdout.startswith(f"report: {out / 'report.png'} (MNIST test accuracy ")
        and (out / "report.png").exists()
    )
    assert not (tmp_path / "data").exists()


# -- options, export ordering, NaN -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, args",
    [
        (edge_train, ["--hiden", "3"]),
        (edge_train, ["--hidden", "x"]),
        (edge_train, ["--threads", "100000"]),
        (edge_train, ["--cell", "transformer"]),
        (edge_export, []),
        (edge_export, ["a.pt"]),
        (edge_export, ["a.pt", "--out", "a.onnx", "--opset", "99"]),
    ],
)
def test_option_errors_are_one_line_exit_2(command, args):
    result = CliRunner().invoke(command, args)
    line = one_line(result.output)
    assert result.exit_code == 2, line
    assert re.match(r"edge-(train|export): error: .+ \(see edge-(train|export) --help\)$", line), line


def test_help_still_works():
    for command in (edge_train, edge_export):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_export_of_a_non_checkpoint_says_so_before_looking_for_mnist(tmp_path):
    from PIL import Image

    png = tmp_path / "notacheckpoint.png"
    Image.new("L", (28, 28), 255).save(png)
    result = CliRunner().invoke(
        edge_export,
        [str(png), "--out", str(tmp_path / "x.onnx"), "--data-dir", str(tmp_path / "nothing"), "--no-download"],
    )
    line = one_line(result.output)
    assert result.exit_code == 2 and "not a checkpoint" in line and "MNIST" not in line, line
    assert not (tmp_path / "x.onnx").exists()


def test_export_names_missing_checkpoint_keys(tmp_path, mid_run_checkpoint):
    state = torch.load(mid_run_checkpoint, weights_only=True)
    del state["model"]
    torch.save(state, tmp_path / "c.pt")
    result = CliRunner().invoke(edge_export, [str(tmp_path / "c.pt"), "--out", str(tmp_path / "x.onnx")])
    line = one_line(result.output)
    assert result.exit_code == 2 and "lacks model" in line, line


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, mnist) -> Path:
    run = tmp_path_factory.mktemp("small")
    train_small(run, mnist, hidden=16, images=2000)
    return run / "checkpoint.pt"


def _with_weights(checkpoint: Path, dest: Path, change) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    change(state["model"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    dest.write_bytes(buffer.getvalue())
    return dest


def test_export_refuses_nan_weights(tmp_path, small_run, data_root):
    def diverged(model):
        model["rnn.weight_hh_l0"][0, 0] = float("nan")

    bad = _with_weights(small_run, tmp_path / "nan.pt", diverged)
    result = CliRunner().invoke(
        edge_export, [str(bad), "--out", str(tmp_path / "x.onnx"), "--data-dir", str(data_root), "--no-download"]
    )
    line = one_line(result.output)
    assert result.exit_code == 2 and "NaN" in line and "rnn.weight_hh_l0" in line, line
    assert not (tmp_path / "x.onnx").exists()


def test_export_parity_does_not_pass_on_non_finite_logits(tmp_path, small_run, data_root):
    """Finite weights whose logits overflow to inf (and inf - inf is NaN, which compares false)."""

    def overflow(model):
        model["fc.weight"].fill_(3e38)

    bad = _with_weights(small_run, tmp_path / "huge.pt", overflow)
    result = CliRunner().invoke(
        edge_export, [str(bad), "--out", str(tmp_path / "x.onnx"), "--data-dir", str(data_root), "--no-download"]
    )
    line = one_line(result.output)
    assert result.exit_code == 1 and "NaN or inf" in line, line
    assert not (tmp_path / "x.onnx").exists()


# -- threads ---------------------------------------------------------------------------------------------------


def _state_bytes(trainer: Trainer) -> dict[str, bytes]:
    return {name: tensor.numpy().tobytes() for name, tensor in trainer.final_model.state_dict().items()}


def test_same_seed_and_threads_give_byte_identical_weights(tmp_path, mnist):
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(
            tmp_path / name,
            ModelConfig("rnn", 16, 1),
            replace(PRESETS["default"], epochs=1, unipen=0.0),
            mnist[0].head(1500),
            mnist[1],
            seed=5,
            threads=1,
            progress_bar=False,
        )
        trainer.fit()
        runs.append(_state_bytes(trainer))
        assert load_checkpoint(tmp_path / name / "checkpoint.pt")["threads"] == 1
    assert runs[0] == runs[1]


def test_threads_are_recorded_and_kept_on_resume(tmp_path, data_root):
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    result = CliRunner().invoke(
        edge_train,
        ["--preset", "seed", "--epochs", "1", *TINY, "--threads", "2", "--data-dir", str(data_root), "--out", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["threads"] == 2 and state["data_dir"] == str(data_root.resolve())
    result = CliRunner().invoke(
        edge_train, ["--resume", "--epochs", "2", "--out", str(out), "--quiet"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "checkpoint.pt")["threads"] == 2
    assert torch.get_num_threads() == threads  # fit() gives the process's thread count back
