"""Per-epoch callbacks: evaluation, the run record (history, checkpoints, state)
and the progress display."""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sglr_keras import evaluation, sglr
from sglr_keras.attacks.pgd import PGD
from sglr_keras.io import atomic_write_text, atomic_save_model, atomic_save_weights
from sglr_keras.runs.folder import RunFolder


# Evaluation seeds are seed * stride + epoch: distinct for every (seed, epoch < stride).
EPOCH_SEED_STRIDE = 100_003


class InterruptAtStepEnd(keras.callbacks.Callback):
    """Ctrl-C during ``fit`` takes effect at the next step or epoch end.

    Python raises KeyboardInterrupt wherever the main thread happens to be; inside
    an object's ``__del__`` (TensorFlow frees tensors and iterators there) the
    exception is printed and dropped, and training would go on. So the handler
    only records the request, and this callback raises KeyboardInterrupt from its
    own code, after the epoch's record is written when the request came during
    the epoch-end work (it must be the last callback). A second Ctrl-C raises at
    once. Use as a context manager around ``fit``: it installs the handler (main
    thread only) and always restores the previous one."""

    def __init__(self):
        super().__init__()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _check(self, *args, **kwargs):
        if self.requested:
            raise KeyboardInterrupt

    on_train_batch_end = on_epoch_end = _check


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the run at the first batch whose loss is NaN or infinite, before
    anything is saved, so the last good checkpoint stays the last one written."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = _plain((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss} at step {batch + 1} of epoch {self.epoch + 1}")


class EpochEvaluation(keras.callbacks.Callback):
    """Test and train clean / PGD accuracy on fixed subsets, ECE, table entropy,
    learning rate; added to the epoch's logs so every later callback sees them.

    The attack draws its random starts from its own generator (``PGD(...,
    generator=...)``), reset to (seed, epoch) before each evaluation, so a resumed
    run evaluates exactly as an uninterrupted one. ``epochs_to_evaluate``
    (1-based; None: all) skips the others.
    """

    def __init__(self, test_data, train_data, attack: PGD, batch_size: int, seed: int = 0,
                 epochs_to_evaluate: set[int] | None = None):
        super().__init__()
        if attack.generator is None:
            raise ValueError("EpochEvaluation needs a PGD built with a generator, to seed it by epoch")
        self.test_data, self.train_data = test_data, train_data
        self.attack, self.batch_size, self.seed = attack, batch_size, seed
        self.epochs_to_evaluate = epochs_to_evaluate
        self.runner = None
        self.epoch_start = 0.0
        self.epoch_lr = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        # The rate this epoch's steps use (drops fall on epoch boundaries); read at
        # the end, the schedule would already give the next epoch's rate.
        self.epoch_lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        logs["train_seconds"] = time.perf_counter() - self.epoch_start
        logs["lr"] = self.epoch_lr
        if self.epochs_to_evaluate is not None and epoch + 1 not in self.epochs_to_evaluate:
            logs["seconds"] = time.perf_counter() - self.epoch_start
            return
        eval_start = time.perf_counter()
        self.attack.generator.reset_from_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        self.runner = self.runner or evaluation.ModelRunner(self.model.classifier, self.batch_size)
        for prefix, (x, y) in (("test", self.test_data), ("train", self.train_data)):
            if len(y) == 0:
                continue
            logits = self.runner.logits(x)
            correct = np.argmax(logits, axis=-1) == y
            robust = self.runner.attack(self.attack, x, y, correct)
            logs[f"{prefix}_clean_acc"] = float(correct.mean())
            logs[f"{prefix}_robust_acc"] = robust.robust_accuracy
            if prefix == "test":
                logs["test_ece"] = evaluation.expected_calibration_error(logits, y)
        if "train_robust_acc" in logs:
            logs["robust_gap"] = logs["train_robust_acc"] - logs["test_robust_acc"]
        if self.model.soft_label_table is not None:
            logs["table_entropy"] = sglr.row_entropy(self.model.soft_label_table.numpy_rows())
        logs["eval_seconds"] = time.perf_counter() - eval_start
        logs["seconds"] = time.perf_counter() - self.epoch_start


class RunRecorder(keras.callbacks.Callback):
    """Writes history (CSV and JSON lines), ``best.keras`` (by test robust accuracy),
    ``last.keras`` and the resumable training state, each atomically."""

    def __init__(self, run_dir: Path, history: list[dict], best: dict | None):
        super().__init__()
        self.run_dir = run_dir
        self.history = history
        self.best = best or {"epoch": None, "test_robust_acc": -1.0}

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{k: _plain(v) for k, v in logs.items()}}
        self.history.append(record)
        classifier = self.model.classifier
        folder = RunFolder(self.run_dir)
        improved = record.get("test_robust_acc", -1.0) > self.best["test_robust_acc"]
        if improved:
            self.best = {"epoch": epoch + 1, "test_robust_acc": record["test_robust_acc"]}
            atomic_save_model(classifier, folder.checkpoint("best"))
        atomic_save_model(classifier, folder.checkpoint("last"))
        folder.state_dir.mkdir(exist_ok=True)
        atomic_save_weights(self.model, folder.trainer_weights)
        write_history(self.run_dir, self.history)
        # state.json is the commit point and goes last: it names the epoch the files
        # above belong to. Killed before it, a resume retrains this epoch from the
        # previous state (bit-identical: data order and noise are functions of the
        # seed, step and example) and overwrites what was written.
        atomic_write_text(folder.state, json.dumps({"epoch": epoch + 1, "best": self.best}))


def _plain(value) -> float:
    """A log value as a float (train-step metrics arrive as shape (1,))."""
    return float(np.asarray(value).reshape(-1)[0])


def write_history(run_dir: Path, history: list[dict]) -> None:
    folder = RunFolder(run_dir)
    atomic_write_text(folder.history_jsonl, "".join(json.dumps(r) + "\n" for r in history))
    columns = list(dict.fromkeys(k for record in history for k in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(folder.history_csv, buffer.getvalue())


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run; a hand-edited or cut file is refused in one
    line naming it (every command reads it through here)."""
    from sglr_keras.errors import UserError

    path = RunFolder(run_dir).history_jsonl
    if not path.is_file():
        return []
    history = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise UserError(f"'{path}' is corrupt at line {number} (each line must be one epoch's JSON record); "
                            "restore it, or pass --overwrite to sglr train to start the run again")
        history.append(record)
    return history


SUMMARY_KEYS = (("loss", "loss"), ("acc", "train adv acc"), ("test_clean_acc", "test clean"),
                ("test_robust_acc", "test robust"), ("train_robust_acc", "train robust"))


class RichProgress(keras.callbacks.Callback):
    """A progress bar per epoch and one summary line when it ends."""

    def __init__(self, epochs: int, steps: int, console: Console | None = None):
        super().__init__()
        self.epochs, self.steps = epochs, steps
        self.console = console or Console(stderr=True)
        self.progress = None
        self.task = None

    def on_epoch_begin(self, epoch, logs=None):
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.steps, status="")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        status = f"loss {_plain(logs.get('loss', 0)):.3f} acc {_plain(logs.get('acc', 0)):.3f}"
        self.progress.update(self.task, completed=batch + 1, status=status)

    def on_train_begin(self, logs=None):
        self.console.print("legend: train adv acc = accuracy on the epoch's own training attacks (running mean); "
                           "test/train robust = PGD accuracy on fixed subsets after the epoch; accuracies in %",
                           highlight=False, soft_wrap=True)

    def on_epoch_end(self, epoch, logs=None):
        self._stop()
        parts = [f"{label} {_plain(logs[key]):.4f}" if key == "loss" else f"{label} {100 * _plain(logs[key]):.1f}"
                 for key, label in SUMMARY_KEYS if key in logs]
        timing = f"{float(logs.get('seconds', 0)):.1f}s"
        if "eval_seconds" in logs:  # what the per-epoch evaluation costs (evaluation.every thins it)
            timing += f", evaluation {float(logs['eval_seconds']):.1f}s of it"
        self.console.print(f"epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts) + f"  ({timing})",
                           soft_wrap=True, highlight=False)

    def on_train_end(self, logs=None):
        self._stop()

    def _stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class RobustValidation(keras.callbacks.Callback):
    """Clean and PGD accuracy on held-out points after each (``every``-th) epoch,
    written into the epoch's logs as ``val_clean_acc`` and ``val_robust_acc``, so
    that Keras's own callbacks listed after it (``EarlyStopping``,
    ``ModelCheckpoint(monitor="val_robust_acc", mode="max")``, ``CSVLogger``,
    ``TensorBoard``) can use them. The random starts are seeded by (seed, epoch):
    a resumed run measures what an uninterrupted one would.

    >>> import keras
    >>> from sglr_keras import PGD, RobustValidation
    >>> callbacks = [RobustValidation(x_val, y_val, PGD(eps=8 / 255, steps=10)),
    ...              keras.callbacks.EarlyStopping(monitor="val_robust_acc", mode="max", patience=10)]
    ... # doctest: +SKIP
    """

    def __init__(self, x, y, attack: PGD | None = None, every: int = 1, batch_size: int = 256, seed: int = 0):
        super().__init__()
        import tensorflow as tf

        if every < 1:
            raise ValueError(f"RobustValidation: every must be >= 1, got {every}")
        attack = attack or PGD(8 / 255, 2 / 255, 10)
        # A generator owned here makes the starts reproducible per epoch.
        self.attack = PGD(attack.eps, attack.step_size, attack.steps, attack.random_start, attack.loss, attack.norm,
                          attack.restarts, generator=tf.random.Generator.from_seed(seed))
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y).astype(np.int64)
        self.every, self.batch_size, self.seed = every, batch_size, seed
        self.runner = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        classifier = getattr(self.model, "classifier", self.model)
        self.attack.generator.reset_from_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        self.runner = self.runner or evaluation.ModelRunner(classifier, self.batch_size)
        correct = self.runner.correct(self.x, self.y)
        logs["val_clean_acc"] = float(correct.mean())
        logs["val_robust_acc"] = self.runner.attack(self.attack, self.x, self.y, correct).robust_accuracy
