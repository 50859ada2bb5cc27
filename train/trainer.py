"""The training loop: recipes, epochs, evaluation, checkpoints, history and curves.

Everything a run produces lives in one directory:
  checkpoint.pt  model config + weights + optimizer/scheduler state + progress, with the history (atomic)
  history.json   one object per finished epoch: a copy of the checkpoint's history, rewritten from it
  curves.png     loss and accuracy per epoch, train vs test
The checkpoint is the record: history.json and curves.png are derived from it, so a run killed between
writing them is put right when it resumes.
"""

from __future__ import annotations

import copy
import io
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F

from train import DEFAULT_THREADS
from train.calibrate import fit_temperature
from train.data import Split
from train.files import atomic_write
from train.model import DigitRNN, ModelConfig

CHECKPOINT_FORMAT = "edge-infer-checkpoint/1"
EVAL_BATCH = 2000
RUN_FILES = ("checkpoint.pt", "history.json", "curves.png")  # atomic_write's temporaries: .NAME.XXXXXXXX
# What --resume needs from a checkpoint (export needs only model_config and model).
RESUME_KEYS = (
    "model_config",
    "recipe",
    "seed",
    "train_size",
    "model",
    "train_model",
    "optimizer",
    "scheduler",
    "progress",
)
MNIST_TRAIN_SIZE = 60_000  # the size the recipe's UNIPEN share is given for
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # "rmsprop" | "adamw"
    lr: float
    batch_size: int
    epochs: int
    weight_decay: float = 0.0
    one_cycle: bool = False  # OneCycleLR over the whole run; otherwise a constant lr
    clip_grad_norm: float | None = None
    identity_init: bool = False  # IRNN init; only affects the ReLU rnn cell
    augment: bool = False  # small random shifts/rotations/scales and stroke thickness changes
    ema_decay: float | None = None  # evaluate and export an exponential moving average of the weights
    synthetic: float = 0.0  # real-world-like digits (train.synth) added per MNIST training image
    calibration_images: int = 0  # MNIST training images held out (with synthetic twins) to fit a temperature
    unipen: float = 0.0  # renderings of each training writer's UNIPEN digit (train.unipen; needs the data dir),
    # for all 60,000 MNIST training images; fewer (--limit-train) scale it down alike, keeping the sources' mix


PRESETS: dict[str, Recipe] = {
    # The reference notebook, exactly: RMSprop lr 3e-4, batch 64, 30 epochs, PyTorch's default init.
    "seed": Recipe(optimizer="rmsprop", lr=3e-4, batch_size=64, epochs=30),
    # Same architecture, trained for a 2-core CPU: in-memory batches, a larger batch, AdamW with a
    # one-cycle schedule, identity recurrent init, gradient clipping, and a weight average (EMA), which
    # is ~1 point more accurate than the raw weights while the learning rate is still high.
    # For the real world (writers, pens and scanners MNIST lacks), one synthetic digit per MNIST image
    # (degraded MNIST, pen-stroke templates, printed; train.synth) with online shifts and rotations on top,
    # and a temperature fitted on held-out images so that confidences mean what they say.
    # Real pen data from 183 writers (UNIPEN; 131 writers trained on, the rest held out), each digit drawn
    # four times with random pens, scanners, cameras or a few-point tablet (train.unipen): real styles MNIST lacks.
    "default": Recipe(
        optimizer="adamw",
        lr=2e-3,
        batch_size=128,
        epochs=10,
        weight_decay=1e-4,
        one_cycle=True,
        clip_grad_norm=1.0,
        identity_init=True,
        ema_decay=0.998,
        augment=True,
        synthetic=1.0,
        calibration_images=5000,
        unipen=4.0,
    ),
}
# Gated cells (gru, lstm) take a higher peak learning rate and more epochs.
GATED_DEFAULT = replace(PRESETS["default"], lr=4e-3, epochs=12)


def preset_recipe(preset: str, cell: str) -> Recipe:
    """The recipe a preset means for a cell: 'default' is tuned per cell family; 'seed' is fixed."""
    if preset == "default" and cell != "rnn":
        return GATED_DEFAULT
    return PRESETS[preset]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at a batch boundary, and the checkpoint of that point was saved."""


@dataclass
class Progress:
    """Where a run stands; saved in the checkpoint so that --resume continues exactly."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the current (unfinished) epoch
    loss_sum: float = 0.0  # running sums over the current epoch's finished batches
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # cumulative training wall time, evaluation excluded
    generator_state: torch.Tensor | None = None  # the epoch's RNG state after `batch` batches
    history: list[dict] = field(default_factory=list)


def build_model(config: ModelConfig, recipe: Recipe) -> DigitRNN:
    model = DigitRNN(config)
    if recipe.identity_init and config.cell == "rnn":
        model.identity_recurrent_init()
    return model


def build_optimizer(model: DigitRNN, recipe: Recipe, steps_per_epoch: int):
    if recipe.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.one_cycle and total_steps >= 4:  # fewer steps leave no room for a warm-up and an annealing phase
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps)
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine (±2 px shift, ±10° rotation, 0.9–1.1 scale) and stroke thickness, per image.
    Real handwriting varies in exactly these ways after MNIST-style preprocessing."""
    n = images.shape[0]
    rand = torch.rand(n, 5, generator=generator)
    angle = (rand[:, 0] - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * rand[:, 1]
    shift = (rand[:, 2:4] - 0.5) * (4 / 14)  # ±2 px in affine_grid's [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, 28, 28), align_corners=False)
    out = F.grid_sample(images.unsqueeze(1), grid, align_corners=False, padding_mode="zeros")
    # A third of the images get thicker strokes, a sixth thinner ones (grey dilation / erosion).
    thick = F.max_pool2d(out, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-out, 2, stride=1, padding=1)[..., 1:, 1:]
    choice = rand[:, 4].view(n, 1, 1, 1)
    out = torch.where(
        choice < 1 / 3, 0.5 * (out + thick), torch.where(choice > 5 / 6, torch.maximum(thin, 0.5 * out), out)
    )
    return out.squeeze(1)


def with_synthetic(
    train: Split, recipe: Recipe, seed: int, data_dir: str | Path | None = None
) -> tuple[Split, Split | None, dict[str, int]]:
    """(what to train on, what to calibrate on). The last `calibration_images` MNIST images are held out;
    the rest get recipe.synthetic real-world-like twins each (train.synth), and the held-out ones a
    synthetic twin each; recipe.unipen renderings of each UNIPEN training writer's digits are added
    (train.unipen), and the calibration writers' digits drawn twice go to calibration: the temperature is
    fitted on MNIST-like, synthetic and real pen digits alike. On fewer than all 60,000 MNIST training images,
    UNIPEN is scaled down alike. UNIPEN is read from data_dir (DataError if it is not there; ValueError
    without a data_dir). The third value: how many training images of each kind (MNIST, synthetic, UNIPEN)
    and how many MNIST images were held out for calibration."""
    unipen = None
    if recipe.unipen > 0:  # read first: a missing file fails before minutes of drawing
        from train.unipen import load_unipen

        if data_dir is None:
            raise ValueError("the recipe draws UNIPEN digits (unipen > 0) but no data directory was given")
        unipen = load_unipen(data_dir)
    holdout = min(recipe.calibration_images, len(train) // 10)
    fit = train.head(len(train) - holdout)
    calibration = Split(train.images[len(fit) :], train.labels[len(fit) :]) if holdout else None
    mix = {"MNIST": len(fit), "synthetic": 0, "UNIPEN": 0, "held out": holdout}
    if recipe.synthetic > 0:
        from train.synth import build_pool

        fit = _concat(
            fit, build_pool(fit.images.numpy(), fit.labels.numpy(), _pool_spec(len(fit) * recipe.synthetic, seed))
        )
        mix["synthetic"] = len(fit) - mix["MNIST"]
        if calibration is not None:
            calibration = _concat(
                calibration,
                build_pool(
                    calibration.images.numpy(), calibration.labels.numpy(), _pool_spec(len(calibration), seed + 1)
                ),
            )
    if unipen is not None:
        from train.unipen import build_unipen_pool

        scale = min(1.0, len(train) / MNIST_TRAIN_SIZE)
        fit = _concat(fit, build_unipen_pool(unipen.role("train"), recipe.unipen * scale, seed))
        mix["UNIPEN"] = len(fit) - mix["MNIST"] - mix["synthetic"]
        if calibration is not None:
            calibration = _concat(calibration, build_unipen_pool(unipen.role("calibration"), 2.0 * scale, seed + 1))
    return fit, calibration, mix


def _pool_spec(total: float, seed: int):
    from train.synth import PoolSpec

    degraded, strokes = round(total * 0.55), round(total * 0.38)  # the rest printed
    return PoolSpec(degraded=degraded, strokes=strokes, printed=max(0, round(total) - degraded - strokes), seed=seed)


def _concat(split: Split, extra: tuple) -> Split:
    images, labels = extra
    return Split(
        torch.cat([split.images, torch.from_numpy(images)]), torch.cat([split.labels, torch.from_numpy(labels)])
    )


@torch.no_grad()
def evaluate(model: DigitRNN, split: Split, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a whole split."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(split), EVAL_BATCH):
        index = slice(start, start + EVAL_BATCH)
        images, labels = split.floats(index).to(device), split.labels[index].to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return loss_sum / len(split), correct / len(split)


class _StopFlag:
    """Ctrl-C asks the loop to stop at the next batch boundary (so weights are never half-updated);
    a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopFlag:
        self._previous = signal.getsignal(signal.SIGINT)
        if _in_main_thread():
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if _in_main_thread():
            signal.signal(signal.SIGINT, self._previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Trainer:
    def __init__(
        self,
        run_dir: Path,
        config: ModelConfig,
        recipe: Recipe,
        train: Split,
        test: Split,
        seed: int = 0,
        device: str = "cpu",
        log: Callable[[str], None] | None = None,
        progress_bar: bool = True,
        threads: int = DEFAULT_THREADS,
        data_dir: str | Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config, self.recipe = config, recipe
        self.train_split, self.test_split = train, test
        self.seed = seed
        self.threads = threads  # torch's CPU threads while fitting; the trained weights depend on it
        # Remembered so that `edge-train --resume --out DIR` finds the data as the run did, offline too.
        self.data_dir = str(Path(data_dir).resolve()) if data_dir is not None else None
        self.device = torch.device(device)
        self.log = log or (lambda line: None)
        self.progress_bar = progress_bar
        self.mnist_size = len(train)
        self.train_split, self.calibration_split, self.mix = with_synthetic(train, recipe, seed, data_dir)
        self.calibration: dict = {}
        self.steps_per_epoch = math.ceil(len(self.train_split) / recipe.batch_size)
        torch.manual_seed(seed)
        self.model = build_model(config, recipe).to(self.device)
        # The weights we evaluate and ship: the EMA when the recipe has one, else the trained weights.
        self.ema = copy.deepcopy(self.model) if recipe.ema_decay else None
        self.optimizer, self.scheduler = build_optimizer(self.model, recipe, self.steps_per_epoch)
        self.progress = Progress()

    def mix_text(self) -> str:
        """What the training set is made of, e.g. "9,000 images: 4,500 MNIST + 4,500 synthetic; 500 more MNIST
        held out for calibration": the synthetic twins and UNIPEN renderings make it larger than --limit-train."""
        mix = self.mix
        parts = " + ".join(f"{mix[kind]:,} {kind}" for kind in ("MNIST", "synthetic", "UNIPEN") if mix[kind])
        held = f"; {mix['held out']:,} more MNIST held out for calibration" if mix["held out"] else ""
        return f"{len(self.train_split):,} images: {parts}{held}"

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.config.to_dict(),
            "recipe": asdict(self.recipe),
            "seed": self.seed,
            "threads": self.threads,
            "data_dir": self.data_dir,
            "train_size": self.mnist_size,
            "calibration": self.calibration,
            "model": self.final_model.state_dict(),  # what export/ ships
            "train_model": self.model.state_dict(),  # what training continues from
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.progress.epoch,
            "progress": asdict(self.progress),
            "test_acc": self.progress.history[-1]["test_acc"] if self.progress.history else None,
        }
        # Serialised in memory first: torch.save onto a path reports a full disk as a RuntimeError from its
        # zip writer; a plain write reports it as the OSError it is.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.checkpoint_path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))

    def saved(self) -> str:
        """What the checkpoint on disk holds, read back from it: for messages, which must be true."""
        return describe_saved(self.checkpoint_path, self.steps_per_epoch)

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        train: Split,
        test: Split,
        device: str = "cpu",
        limit_train: int | None = None,
        threads: int | None = None,
        state: dict | None = None,
        **kwargs,
    ) -> Trainer:
        """Continue a run; it trains on the same first-N training images, with the same thread count, as
        before unless told otherwise. A checkpoint that does not fit raises ValueError with one line."""
        path = Path(run_dir) / "checkpoint.pt"
        state = load_checkpoint(path) if state is None else state
        try:
            require_keys(state, RESUME_KEYS)
            config = ModelConfig(**_checked_fields(ModelConfig, state["model_config"], "model_config"))
            recipe = Recipe(**_checked_fields(Recipe, state["recipe"], "recipe"))
            progress = Progress(**_checked_fields(Progress, state["progress"], "progress"))
            for key in ("seed", "train_size", "threads"):
                if key in state and not _matches(state[key], int):
                    raise ValueError(f"{key} is {state[key]!r}, not a whole number")
            for what, number in (
                ("recipe.batch_size", recipe.batch_size),
                ("recipe.epochs", recipe.epochs),
                ("train_size", state["train_size"]),
                ("threads", state.get("threads", 1)),
            ):
                if number < 1:
                    raise ValueError(f"{what} is {number}, not positive")
        except ValueError as error:
            raise ValueError(f"{path} cannot be resumed: {error}") from None
        size = limit_train or state["train_size"]
        if size != state["train_size"] or size > len(train):
            raise ValueError(
                f"the run in {run_dir} trained on {state['train_size']} images, not {size}; "
                f"resume it with --limit-train {state['train_size']} or none"
            )
        train = train.head(size)
        threads = threads or state.get("threads") or DEFAULT_THREADS
        trainer = cls(
            run_dir,
            config,
            recipe,
            train,
            test,
            seed=state["seed"],
            device=device,
            threads=threads,
            data_dir=state["data_dir"] if isinstance(state.get("data_dir"), str) else None,
            **kwargs,
        )
        try:
            trainer._load_state(state, progress)
            trainer.calibration = dict(state.get("calibration") or {})
        except ValueError as error:
            raise ValueError(f"{path} cannot be resumed: {error}") from None
        return trainer

    def _load_state(self, state: dict, progress: Progress) -> None:
        """Load a checkpoint's weights, optimizer, scheduler and progress after checking that each has the
        structure this run's own would have (torch checks little of it and fails later, mid-epoch)."""
        _conform(state["train_model"], self.model.state_dict(), "train_model")
        _conform(state["model"], self.final_model.state_dict(), "model")
        # The optimizer's state as it is after one step: every parameter's tensors, in the right shapes.
        probe = copy.deepcopy(self.model)
        probe_optimizer, _ = build_optimizer(probe, self.recipe, self.steps_per_epoch)
        for param in probe.parameters():
            param.grad = torch.zeros_like(param)
        probe_optimizer.step()
        reference = probe_optimizer.state_dict()
        optimizer = state["optimizer"]
        if isinstance(optimizer, dict) and optimizer.get("state") == {}:  # saved before the first step
            reference["state"] = {}
        _conform(optimizer, reference, "optimizer", loose=("param_groups",))
        # Schedulers load by updating their __dict__: keys may come and go between torch versions, types not.
        _conform(state["scheduler"], self.scheduler.state_dict(), "scheduler", loose=("scheduler",))
        self._check_progress(progress)
        self.model.load_state_dict(state["train_model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["model"])
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = progress

    def _check_progress(self, p: Progress) -> None:
        if not 0 <= p.batch <= self.steps_per_epoch or p.epoch < 0:
            raise ValueError(
                f"progress is at epoch {p.epoch}, batch {p.batch}; an epoch has {self.steps_per_epoch} batches"
            )
        if p.seen != min(p.batch * self.recipe.batch_size, len(self.train_split)) or not 0 <= p.correct <= p.seen:
            raise ValueError(f"progress counts {p.seen} images ({p.correct} right) after {p.batch} batches")
        if len(p.history) != p.epoch:
            raise ValueError(f"its history has {len(p.history)} epochs, its progress {p.epoch}")
        for record in p.history:
            if not isinstance(record, dict) or not all(_matches(record.get(key), float) for key in HISTORY_KEYS):
                raise ValueError(f"a history record lacks one of {', '.join(HISTORY_KEYS)}")
        if p.generator_state is not None:
            try:
                torch.Generator().set_state(p.generator_state)
            except (RuntimeError, TypeError):
                raise ValueError("progress.generator_state is not a random generator's state") from None

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train until recipe.epochs; returns the history. Ctrl-C saves a checkpoint and raises Interrupted
        (a second Ctrl-C: a plain KeyboardInterrupt, at once); a NaN/inf loss raises TrainingDiverged
        without touching the checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        with _StopFlag() as stop:
            remove_temporaries(self.run_dir)
            # history.json follows the checkpoint's history, the record: a run killed between writing the two
            # (or resumed when already done) is made consistent here.
            write_history(self.run_dir, self.progress.history)
            torch.set_num_threads(self.threads)
            try:
                while self.progress.epoch < self.recipe.epochs:
                    if not self._train_epoch(stop):
                        self.save_checkpoint()
                        raise Interrupted
                    self._finish_epoch()
                if self.calibration_split is not None and not self.calibration:
                    self.calibration = fit_temperature(self.final_model, self.calibration_split, self.device)
                    self.save_checkpoint()
                    self.log(
                        f"calibrated on {self.calibration['images']} held-out images: temperature "
                        f"{self.calibration['temperature']:.3f}, ECE {self.calibration['ece_before']:.2%} -> "
                        f"{self.calibration['ece_after']:.2%}"
                    )
            finally:
                torch.set_num_threads(threads)
        return self.progress.history

    def _train_epoch(self, stop: _StopFlag) -> bool:
        """Runs the rest of the current epoch; False when stopped early by Ctrl-C."""
        p, recipe, split = self.progress, self.recipe, self.train_split
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + p.epoch)
        order = torch.randperm(len(split), generator=generator)  # same order when resumed mid-epoch
        if p.generator_state is not None:
            generator.set_state(p.generator_state)
        self.model.train()
        bar = self._bar(p.batch)
        start = time.perf_counter()
        try:
            for batch in range(p.batch, self.steps_per_epoch):
                if stop.requested:
                    return False
                index = order[batch * recipe.batch_size : (batch + 1) * recipe.batch_size]
                images, labels = split.floats(index), split.labels[index]
                if recipe.augment:
                    images = augment(images, generator)
                images, labels = images.to(self.device), labels.to(self.device)
                logits = self.model(images)
                loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at epoch {p.epoch + 1}, batch {batch + 1}; stopped; "
                        f"{self.saved()}; try a lower --lr"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), recipe.clip_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self._update_ema()
                # Per-sample bookkeeping: the notebook summed each batch's loss into itself; we don't.
                p.loss_sum += loss.item() * len(labels)
                p.correct += (logits.argmax(1) == labels).sum().item()
                p.seen += len(labels)
                p.batch = batch + 1
                p.generator_state = generator.get_state()
                if bar is not None:
                    bar.update(1, f"loss {p.loss_sum / p.seen:.4f}  acc {p.correct / p.seen:.2%}")
        finally:
            p.seconds += time.perf_counter() - start
            if bar is not None:
                bar.render_finish()
        return True

    @property
    def final_model(self) -> DigitRNN:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up as in TensorFlow's ExponentialMovingAverage: early on, follow the weights more closely.
        step = self.scheduler.last_epoch
        decay = min(self.recipe.ema_decay, (1 + step) / (10 + step))
        for average, param in zip(self.ema.parameters(), self.model.parameters(), strict=False):
            average.lerp_(param, 1 - decay)

    def _finish_epoch(self) -> None:
        p = self.progress
        test_loss, test_acc = evaluate(self.final_model, self.test_split, self.device)
        record = {
            "epoch": p.epoch + 1,
            "train_loss": p.loss_sum / p.seen,
            "train_acc": p.correct / p.seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": round(p.seconds, 3),
            "lr": self.scheduler.get_last_lr()[0],
        }
        self.progress = replace(
            p,
            epoch=p.epoch + 1,
            batch=0,
            loss_sum=0.0,
            correct=0,
            seen=0,
            generator_state=None,
            history=[*p.history, record],
        )
        self.save_checkpoint()
        write_history(self.run_dir, self.progress.history)
        self.log(
            f"epoch {record['epoch']:>2}/{self.recipe.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2%}  test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}  "
            f"{record['seconds']:.1f}s"
        )

    def _bar(self, done: int):
        if not self.progress_bar:
            return None
        import click

        bar = click.progressbar(
            length=self.steps_per_epoch,
            label=f"epoch {self.progress.epoch + 1}/{self.recipe.epochs}",
            file=sys.stderr,
            item_show_func=lambda text: text,
            show_pos=True,
        )
        bar.update(done)
        return bar


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by this trainer; ValueError with a one-line reason for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ValueError(f"{path} is not a checkpoint (torch cannot read it: {type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an edge-infer checkpoint")
    return state


def require_keys(state: dict, keys: tuple[str, ...]) -> None:
    """ValueError naming every key of `keys` that the checkpoint lacks."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"the checkpoint lacks {', '.join(missing)}")


def describe_saved(path: Path, steps_per_epoch: int) -> str:
    """'PATH holds the end of epoch 2' / '... epoch 3, batch 17 of 47' / 'no checkpoint was saved', as on disk."""
    if not path.exists():
        return "no checkpoint was saved"
    try:
        progress = load_checkpoint(path)["progress"]
        epoch, batch = int(progress["epoch"]), int(progress["batch"])
    except (ValueError, KeyError, TypeError):
        return f"{path} cannot be read back"
    if batch == 0:
        return f"{path} holds " + (f"the end of epoch {epoch}" if epoch else "the start of training")
    return f"{path} holds epoch {epoch + 1}, batch {batch} of {steps_per_epoch}"


def remove_temporaries(run_dir: Path) -> None:
    """atomic_write's leftovers from a killed run (.checkpoint.pt.XXXXXXXX, ...)."""
    for name in RUN_FILES:
        for leftover in Path(run_dir).glob(f".{name}.*"):
            leftover.unlink(missing_ok=True)


def _matches(value: Any, hint: Any) -> bool:
    """Whether value is of the annotated type (int for float is fine, bool for a number is not)."""
    if get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        return any(_matches(value, option) for option in get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    hint = get_origin(hint) or hint
    return isinstance(value, hint) if isinstance(hint, type) else True


def _checked_fields(cls: type, data: Any, where: str) -> dict:
    """data, checked to be keyword arguments for the dataclass cls: known fields, of the annotated types."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is a {type(data).__name__}, not a table of fields")
    hints = get_type_hints(cls)
    unknown = [str(key) for key in data if key not in hints]
    if unknown:
        raise ValueError(f"{where} has unknown fields {', '.join(unknown)}")
    for field_ in fields(cls):
        if field_.name not in data:
            if field_.default is MISSING and field_.default_factory is MISSING:
                raise ValueError(f"{where} lacks {field_.name}")
        elif not _matches(data[field_.name], hints[field_.name]):
            raise ValueError(f"{where}.{field_.name} is {type(data[field_.name]).__name__}, not {hints[field_.name]}")
    return data


def _conform(value: Any, reference: Any, where: str, loose: tuple[str, ...] = ()) -> None:
    """ValueError naming the first place where value differs from reference in structure: keys, list
    lengths, tensor shapes and dtypes, kinds of scalars. Under a key named in `loose`, keys missing on
    either side are allowed (they are filled in or ignored by whoever loads them)."""
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where} is a {type(value).__name__}, not a dict")
        if not any(part.split("[")[0] in loose for part in where.split(".")):
            missing = [str(k) for k in reference if k not in value]
            extra = [str(k) for k in value if k not in reference]
            if missing or extra:
                raise ValueError(
                    f"{where} "
                    + "; ".join(
                        ([f"lacks {', '.join(missing)}"] if missing else [])
                        + ([f"has unexpected {', '.join(extra)}"] if extra else [])
                    )
                )
        for key in reference:
            if key in value:
                _conform(value[key], reference[key], f"{where}.{key}", loose)
    elif isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(reference):
            raise ValueError(f"{where} is not a list of {len(reference)}")
        for i, (item, expected) in enumerate(zip(value, reference, strict=False)):
            _conform(item, expected, f"{where}[{i}]", loose)
    elif isinstance(reference, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{where} is a {type(value).__name__}, not a tensor")
        if value.shape != reference.shape or value.dtype != reference.dtype:
            raise ValueError(
                f"{where} is {value.dtype} {list(value.shape)}, not {reference.dtype} {list(reference.shape)}"
            )
    elif reference is not None and not (
        _matches(value, float) if _matches(reference, float) else isinstance(value, type(reference))
    ):
        raise ValueError(f"{where} is a {type(value).__name__}, not a {type(reference).__name__}")


def write_history(run_dir: Path, history: list[dict]) -> None:
    text = json.dumps(history, indent=1) + "\n"
    atomic_write(run_dir / "history.json", lambda tmp: Path(tmp).write_text(text))
    if history:
        plot_curves(history, run_dir / "curves.png")
    else:  # no epoch yet: no curves (a stale plot would disagree with the history)
        (run_dir / "curves.png").unlink(missing_ok=True)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title, ylabel in ((loss_ax, "loss", "Loss", "cross-entropy"), (acc_ax, "acc", "Accuracy", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], "o-", label="test")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, also for 1-3 epoch runs
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
