"""A :class:`~sglr_keras.config.TrainConfig` turned into the trainer's parts:
the training attack, the objective, the optimizer and its schedule, XLA or not,
and the epochs evaluated. The only place that reads method names: the CLI's
``train`` and the library's ``AdversarialTrainer`` meet here.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sglr_keras.attacks.training import NoAttack, TradesKL, TrainingPGD
from sglr_keras.config import TrainConfig
from sglr_keras.training import objectives
from sglr_keras.training.trainer import AdversarialTrainer


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


def passes_per_example(config: TrainConfig) -> int:
    """Forward-backward passes per training example and step: the training
    attack's steps, the update, and TRADES's clean forward (for cost estimates)."""
    if config.method == "standard":
        return 1
    return config.attack.steps + 1 + (1 if config.method in ("trades", "trades-sglr") else 0)


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


def evaluated_epochs(config: TrainConfig) -> set[int]:
    """The 1-based epochs the per-epoch evaluation runs on: every
    ``evaluation.every``-th, the first at each new learning rate, and the last."""
    every = config.evaluation.every
    epochs = {e for e in range(1, config.epochs + 1) if e % every == 0}
    epochs |= set(config.optimizer.milestone_epochs(config.epochs))
    epochs.add(config.epochs)
    return epochs
