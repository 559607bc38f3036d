"""``train(config, out_dir)``: one training run, from data to checkpoints.

The run folder's layout is :class:`sglr_keras.runs.RunFolder`; the trainer's
parts come from the config through :mod:`sglr_keras.training.recipe`. This
module orchestrates: data, model, resume or start, callbacks, fit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf
from rich.console import Console

from sglr_keras import distribute, estimate
from sglr_keras.attacks.pgd import PGD
from sglr_keras.config import TrainConfig
from sglr_keras.data import load_dataset
from sglr_keras.data.pipeline import steps_per_epoch, train_dataset
from sglr_keras.errors import Interrupted, UserError
from sglr_keras.io import atomic_write_text
from sglr_keras.models import build_model
from sglr_keras.runs import (RunFolder, RunFolderLock, check_run_dir, create_run_dir, read_json,
                             read_selection_points, read_state, selection_points)
from sglr_keras.runs.summary import run_facts, summarize
from sglr_keras.training.callbacks import (EpochEvaluation, InterruptAtStepEnd, NonFiniteGuard, NonFiniteLossError,
                                           RichProgress, RunRecorder, read_history, write_history)
from sglr_keras.training.recipe import build_trainer, evaluated_epochs, make_optimizer, resolve_jit


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
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        note = estimate.training_note(config, bundle, config.epochs - initial_epoch, classifier,
                                      strategy.num_replicas_in_sync)
        if note:
            console.print(note, highlight=False, soft_wrap=True)

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


