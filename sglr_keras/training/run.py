"""``train(config, out_dir)``: one training run, from data to checkpoints.

The run folder's layout is :class:`sglr_keras.runs.RunFolder`. This module
is also the one place that maps a config to the trainer's parts
(:func:`build_attack`, :func:`build_objective`): no other module compares method
names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None

import keras
import tensorflow as tf
from rich.console import Console

from sglr_keras import distribute
from sglr_keras.attacks.pgd import PGD
from sglr_keras.attacks.training import NoAttack, TradesKL, TrainingPGD
from sglr_keras.config import TrainConfig
from sglr_keras.data import DatasetBundle, load_dataset
from sglr_keras.data.pipeline import steps_per_epoch, train_dataset
from sglr_keras.errors import Interrupted, UserError
from sglr_keras.io import atomic_write_text
from sglr_keras.models import build_model
from sglr_keras.runs import (RunFolder, RunFolderLock, check_run_dir, create_run_dir, read_json,
                             read_selection_points, read_state, selection_points)
from sglr_keras.training import objectives
from sglr_keras.training.callbacks import (EpochEvaluation, InterruptAtStepEnd, NonFiniteGuard, NonFiniteLossError,
                                           RichProgress, RunRecorder, read_history, write_history)
from sglr_keras.training.trainer import AdversarialTrainer


# --- config -> trainer parts (the only place that reads method names) -----------

def build_attack(config: TrainConfig):
    """The training attack of ``config.method``."""
    attack = config.attack
    if config.method == "standard":
        return NoAttack()
    if config.method == "trades":
        return TradesKL(attack.eps, attack.step_size, attack.steps, start="normal")
    if config.method == "trades-sglr":
        # The SGLR reference code starts its TRADES attack from a clipped uniform point.
        return TradesKL(attack.eps, attack.step_size, attack.steps, start="uniform")
    return TrainingPGD(attack.eps, attack.step_size, attack.steps, attack.random_start)


def build_objective(config: TrainConfig, train_labels, num_classes: int) -> objectives.Objective:
    """The objective of ``config.method``."""
    s = config.sglr
    sglr_settings = dict(r=s.r, alpha=s.alpha, lam=s.lam, temperature=s.temperature, warmup_epochs=s.warmup_epochs,
                         clean_forward_training=s.clean_forward_training, table_dtype=s.table_dtype)
    builders = {
        "standard": lambda: objectives.Objective(num_classes),
        "pgd-at": lambda: objectives.Objective(num_classes),
        "label-smoothing": lambda: objectives.LabelSmoothing(num_classes, config.label_smoothing),
        "sglr": lambda: objectives.SGLR(num_classes, train_labels, **sglr_settings),
        "trades": lambda: objectives.TRADES(num_classes, config.trades_beta),
        "trades-sglr": lambda: objectives.TRADESSGLR(num_classes, train_labels, config.trades_beta, **sglr_settings),
    }
    return builders[config.method]()


def build_trainer(classifier: keras.Model, config: TrainConfig, train_labels, num_classes: int) -> AdversarialTrainer:
    """The trainer ``config`` describes, around ``classifier`` (not compiled)."""
    return AdversarialTrainer(classifier, build_attack(config), build_objective(config, train_labels, num_classes),
                              weight_decay=config.optimizer.weight_decay, seed=config.seed)


def make_optimizer(config: TrainConfig, steps: int) -> keras.optimizers.Optimizer:
    """SGD with the learning rate multiplied by ``lr_gamma`` at each milestone.

    Milestone m (an epoch counted from 1, as in the reference code's MultiStepLR
    stepped at the start of each epoch) gives the new rate from the first step of
    epoch m on. Keras's schedule keeps the old rate while ``iterations <= boundary``,
    and the first step of epoch m runs at ``iterations == (m - 1) * steps``.
    """
    opt = config.optimizer
    milestones = opt.milestone_epochs(config.epochs)
    if milestones:
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries=[(m - 1) * steps - 1 for m in milestones],
            values=[opt.lr * opt.lr_gamma**i for i in range(len(milestones) + 1)],
        )
    else:
        schedule = opt.lr
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=opt.momentum, nesterov=opt.nesterov)
    if config.precision == "mixed_float16":
        # float16 gradients underflow without a loss scale; steps with non-finite
        # gradients are skipped and counted (history column skipped_steps).
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def resolve_jit(config: TrainConfig) -> bool:
    """``jit_compile`` as set, or (unset) XLA on GPUs and TPUs and not on CPUs,
    where XLA skips oneDNN and the PGD step ran 4x slower (docs/bench)."""
    if config.jit_compile is not None:
        return config.jit_compile
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def summarize(history: list[dict]) -> dict:
    """Best (by test robust accuracy) and last epoch, and the robust-overfitting gap."""
    if not history:
        return {}
    best = max(history, key=lambda r: r.get("test_robust_acc", -1.0))
    last = history[-1]
    summary = {
        "epochs": last["epoch"],
        "best_epoch": best["epoch"],
        "best_test_robust_acc": best.get("test_robust_acc"),
        "best_test_clean_acc": best.get("test_clean_acc"),
        "last_test_robust_acc": last.get("test_robust_acc"),
        "last_test_clean_acc": last.get("test_clean_acc"),
        "last_train_robust_acc": last.get("train_robust_acc"),
        "last_test_ece": last.get("test_ece"),
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in history),
    }
    if best.get("test_robust_acc") is not None and last.get("test_robust_acc") is not None:
        summary["best_minus_last_robust_acc"] = best["test_robust_acc"] - last["test_robust_acc"]
    return summary


def run_facts(config: TrainConfig, bundle: DatasetBundle, extended_from: list[int] | None = None) -> dict:
    facts = {"dataset": bundle.name, "class_names": bundle.class_names, "num_classes": bundle.num_classes,
             "input_shape": list(bundle.input_shape), "num_train": bundle.num_train,
             "arch": config.model.arch, "init": config.model.init, "padding": config.model.padding,
             "method": config.method,
             "label_noise": {"rate": config.data.label_noise, "mode": config.data.label_noise_mode,
                             "wrong_label_fraction": bundle.wrong_label_fraction},
             "lr_drop_epochs": config.optimizer.milestone_epochs(config.epochs)}
    if extended_from:
        facts["extended_from_epochs"] = extended_from
    return facts


def start_from_checkpoint(classifier: keras.Model, path: str | Path) -> None:
    """Copy the weights of a ``.keras`` classifier of the same architecture."""
    from sglr_keras.checkpoints import load_classifier

    source = load_classifier(path)
    if not isinstance(source, keras.Model):
        raise UserError(f"--resume-from '{path}' must be a .keras checkpoint, not an exported SavedModel")
    shapes = [tuple(w.shape) for w in classifier.weights]
    if [tuple(w.shape) for w in source.weights] != shapes:
        raise UserError(f"--resume-from '{path}' has a different architecture or class count than the "
                        "configured model; start from a checkpoint of the same --arch and data set")
    classifier.set_weights(source.get_weights())


def train(config: TrainConfig, out_dir: str | Path, overwrite: bool = False,
          console: Console | None = None, show_progress: bool = True,
          extra_callbacks: list[keras.callbacks.Callback] | None = None,
          resume_from: str | Path | None = None) -> dict:
    """Train as ``config`` says, writing the run folder ``out_dir``; resumes a run
    left there with the same config. Returns the summary. Refuses a folder that
    another process is training."""
    lock = RunFolderLock()
    try:
        return _train(config, Path(out_dir), overwrite, console or Console(stderr=True), show_progress,
                      extra_callbacks, resume_from, lock)
    except BaseException:
        # A run that failed before writing anything leaves no folder behind.
        if lock.created and Path(out_dir).is_dir() and not any(Path(out_dir).iterdir()):
            Path(out_dir).rmdir()
        raise
    finally:
        lock.release()


def _train(config, out_dir, overwrite, console, show_progress, extra_callbacks, resume_from, lock) -> dict:
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    distribute.check_batch_size(config.batch_size, strategy)
    chief = distribute.is_chief(strategy)
    # Other workers write to a private folder that is removed at the end, as
    # TensorFlow's multi-worker guide recommends; only the chief's files remain.
    run_dir = out_dir if chief else out_dir / f".worker-{distribute.task_index()}"
    if chief:
        lock.claim(out_dir)
    # The chief's folder decides where a resumed run starts (shared storage for workers).
    state = check_run_dir(out_dir, config, overwrite) if chief else read_state(out_dir)
    initial_epoch = state["epoch"] if state else 0
    history = read_history(run_dir)[:initial_epoch]
    if initial_epoch >= config.epochs:
        console.print(f"run in '{run_dir}' already finished {initial_epoch} epochs; nothing to do")
        return summarize(history)

    keras.utils.set_random_seed(config.seed)
    data = config.data
    bundle = load_dataset(data.dataset, data.data_dir, data.train_subset, data.label_noise, config.seed,
                          data.label_noise_mode)
    steps = steps_per_epoch(bundle.num_train, config.batch_size)
    augment = data.augment if data.augment is not None else bundle.name != "synthetic"
    dataset = train_dataset(bundle, config.batch_size, config.seed, config.epochs, initial_epoch, augment)

    with strategy.scope():
        try:
            classifier = build_model(config.model.arch, bundle.input_shape, bundle.num_classes, config.model.width,
                                     config.model.sync_batchnorm, config.precision, config.model.init,
                                     config.model.padding)
        except ValueError as err:  # Keras refuses a layer whose output would be empty
            raise UserError(f"{config.model.arch} cannot take {'x'.join(map(str, bundle.input_shape))} images "
                            f"({str(err).strip().splitlines()[0][:160]}); use larger images or another --arch")
        trainer = build_trainer(classifier, config, bundle.y_train, bundle.num_classes)
        jit = resolve_jit(config)
        trainer.compile(optimizer=make_optimizer(config, steps), jit_compile=jit)
        if state:
            trainer.optimizer.build(classifier.trainable_variables)
            state_weights = RunFolder(out_dir).trainer_weights
            try:
                trainer.load_weights(state_weights)
            except Exception as err:  # h5py and Keras raise many types for a damaged file
                raise UserError(f"cannot resume from '{state_weights}' ({type(err).__name__}); "
                                "pass --overwrite to start again, or --resume-from a .keras checkpoint")
            console.print(f"resuming '{run_dir}' after epoch {initial_epoch}")
        elif resume_from is not None:
            start_from_checkpoint(classifier, resume_from)
            console.print(f"starting from the weights of '{resume_from}'")
    console.print(f"strategy: {type(strategy).__name__.lstrip('_')} with {strategy.num_replicas_in_sync} "
                  f"replica(s); precision {config.precision}; XLA {'on' if jit else 'off'}; "
                  f"{bundle.num_train} training examples, {steps} steps per epoch",
                  highlight=False, soft_wrap=True)

    # Everything the run needs exists and fits: from here on the run folder is written.
    folder = RunFolder(run_dir)
    previous_facts = read_json(folder.facts) if state else {}
    extended_from = list(previous_facts.get("extended_from_epochs", []))
    previous_epochs = read_json(folder.config).get("epochs") if state else None
    if chief and not state:
        create_run_dir(run_dir, config, overwrite, lock)
    elif not chief:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif previous_epochs != config.epochs:
        # An extension: the config now states the new total, run.json what it was.
        extended_from.append(previous_epochs)
        atomic_write_text(folder.config, json.dumps(config.to_dict(), indent=2))
        console.print(f"extending the run from {previous_epochs} to {config.epochs} epochs "
                      f"(lr drops stay at epochs {config.optimizer.milestone_epochs(config.epochs)})")
    atomic_write_text(folder.facts, json.dumps(run_facts(config, bundle, extended_from), indent=2))
    # A resumed run keeps the points it started with (the record is the truth).
    points = (read_selection_points(run_dir) if state else None) or selection_points(config, bundle)
    atomic_write_text(folder.selection_points, json.dumps(points))
    if len(points["test_indices"]) < config.evaluation.n_test:
        console.print(f"note: the best epoch is picked on {len(points['test_indices'])} of the "
                      f"{len(bundle.y_test)} test points (evaluation.n_test {config.evaluation.n_test} is capped at "
                      "half the test set, so that the rest stay unseen for sglr eval)", highlight=False)

    attack = config.attack
    evaluation = config.evaluation
    eval_attack = PGD(attack.eps, attack.step_size, evaluation.pgd_steps, random_start=True,
                      generator=tf.random.Generator.from_seed(config.seed))
    callbacks = [
        NonFiniteGuard(),
        EpochEvaluation(bundle.test_points(points["test_indices"]),
                        bundle.train_subset(evaluation.n_train, config.seed),
                        eval_attack, evaluation.batch_size, seed=config.seed,
                        epochs_to_evaluate=evaluated_epochs(config)),
        RunRecorder(run_dir, history, state["best"] if state else None),
    ]
    if show_progress:
        callbacks.append(RichProgress(config.epochs, steps, console))
    callbacks += extra_callbacks or []
    interrupt = InterruptAtStepEnd()
    try:
        with interrupt:
            trainer.fit(dataset, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                        callbacks=callbacks + [interrupt], shuffle=False, verbose=0)
    except NonFiniteLossError as err:
        raise UserError(f"{err}; the last good checkpoint is kept in '{run_dir}'. "
                        "Lower optimizer.lr or check the data")
    except OSError as err:
        raise UserError(f"cannot save to '{run_dir}' ({err.strerror or err}); the previous checkpoint is intact. "
                        "Free space or fix permissions, then rerun the same command to resume")
    except KeyboardInterrupt:
        for callback in callbacks:
            if isinstance(callback, RichProgress):
                callback.on_train_end()
        saved = read_state(Path(out_dir))
        where = f"after epoch {saved['epoch']}" if saved else "before the first epoch ended (nothing saved)"
        raise Interrupted(f"interrupted: '{run_dir}' holds the run {where}; "
                          "rerun the same command to resume from there")
    summary = summarize(history)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return summary
    write_history(run_dir, history)
    atomic_write_text(folder.summary, json.dumps(summary, indent=2))
    return summary


def evaluated_epochs(config: TrainConfig) -> set[int]:
    """The 1-based epochs the per-epoch evaluation runs on: every
    ``evaluation.every``-th, the first at each new learning rate, and the last."""
    every = config.evaluation.every
    epochs = {e for e in range(1, config.epochs + 1) if e % every == 0}
    epochs |= set(config.optimizer.milestone_epochs(config.epochs))
    epochs.add(config.epochs)
    return epochs


