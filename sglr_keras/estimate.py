"""Say so before starting work that will obviously take long.

The cost of a training run or an evaluation is counted in forward-backward
passes of one image through the model (an attack step is one; a forward pass
alone counts a third), at most: every point is assumed to stay robust, so an
attack never stops early. The rate comes from timing the model itself on this
machine, a few small batches after tracing, so the estimate is "up to about".
It is measured only when the count is large enough to matter
(:data:`PROBE_FROM_PASSES`), and the note is printed only when the estimate
exceeds ``SGLR_LONG_WORK_SECONDS`` (default one hour). Nothing is refused: the
note says how long, and Ctrl-C stops the work.
"""

from __future__ import annotations

import os
import time

# Below this many passes no model of ours takes an hour on any machine we know of
# (the slowest measured, ResNet-50 on 2 CPU cores, does about 40 a second).
PROBE_FROM_PASSES = 100_000
DEFAULT_LONG_SECONDS = 3600.0
FORWARD_ONLY = 1 / 3


def long_seconds() -> float:
    """Work estimated above this many seconds gets a note (``SGLR_LONG_WORK_SECONDS``)."""
    try:
        value = float(os.environ.get("SGLR_LONG_WORK_SECONDS", DEFAULT_LONG_SECONDS))
    except ValueError:
        return DEFAULT_LONG_SECONDS
    return value if value >= 0 else DEFAULT_LONG_SECONDS


def attack_passes(name: str, steps: int | None = None, num_classes: int = 10, restarts: int = 1) -> float:
    """Forward-backward passes per point, at most, for attack ``name`` with ``steps``
    (None: the attack's default budget) and the AutoAttack suite's reference settings.

    >>> attack_passes("pgd", steps=20)
    21.0
    >>> attack_passes("autoattack") > attack_passes("apgd-ce")
    True
    """
    targets = min(9, num_classes - 1)
    per_attack = {
        "fgsm": lambda: 1.0,
        "pgd": lambda: (steps or 20) * restarts + 1.0,
        "pgd-reference": lambda: (steps or 20) * restarts + 1.0,
        "cw": lambda: (steps or 30) * restarts + 1.0,
        "apgd-ce": lambda: float(steps or 100),
        "apgd-dlr": lambda: float(steps or 100),
        "apgd-t": lambda: float(targets * (steps or 100)),
        # Untargeted FAB linearises every class boundary: a Jacobian of num_classes rows.
        "fab": lambda: float((steps or 100) * (num_classes + FORWARD_ONLY)),
        "fab-t": lambda: float(targets * (steps or 100) * (1 + FORWARD_ONLY)),
        "square": lambda: (steps or 5000) * FORWARD_ONLY,
    }
    if name == "autoattack":
        return sum(attack_passes(member, None, num_classes) for member in ("apgd-ce", "apgd-t", "fab-t", "square"))
    return per_attack[name]()


def evaluation_passes(attacks, n_points: int, steps: int | None = None, num_classes: int = 10) -> float:
    """Passes for ``attacks`` (registry names) on ``n_points``, at most."""
    return n_points * (1.0 + sum(attack_passes(name, steps, num_classes) for name in attacks))


def training_passes(config, n_train: int, n_selection: int, epochs_left: int) -> float:
    """Passes for the ``epochs_left`` epochs of a run of ``config``: the training
    attack and the weight update per example, and the per-epoch PGD on the
    selection points and the training subset on the evaluated fraction of epochs."""
    from sglr_keras.training.recipe import passes_per_example

    per_epoch = n_train * passes_per_example(config)
    evaluation = config.evaluation
    evaluated = 1 / max(evaluation.every, 1)
    per_epoch += evaluated * (n_selection + evaluation.n_train) * (evaluation.pgd_steps + 1 + FORWARD_ONLY)
    return epochs_left * per_epoch


def measure_rate(model, input_shape, batch: int = 16, repeats: int = 3) -> float:
    """Forward-backward passes (images) per second of ``model`` here: the input
    gradient of a batch of ``batch`` images, best of ``repeats`` after tracing."""
    import tensorflow as tf

    from sglr_keras.attacks.base import input_gradient

    x = tf.zeros((batch, *input_shape), tf.float32)
    gradient = tf.function(lambda images: input_gradient(model, images, lambda logits: tf.cast(logits, tf.float32))[2])
    gradient(x).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        gradient(x).numpy()
        best = min(best, time.perf_counter() - start)
    return batch / max(best, 1e-9)


def human_duration(seconds: float) -> str:
    """>>> human_duration(5400)
    '1.5 h'
    """
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def long_work_note(what: str, passes: float, model, input_shape, parallel: int = 1,
                   resumable: bool = False) -> str | None:
    """One line saying how long ``what`` may take, when that is over
    :func:`long_seconds`; None for work that is short or too small to time.
    ``resumable``: the work (a training run) resumes where Ctrl-C stopped it."""
    threshold = long_seconds()
    if passes < PROBE_FROM_PASSES and threshold >= DEFAULT_LONG_SECONDS:
        return None
    rate = measure_rate(model, input_shape) * max(parallel, 1)
    seconds = passes / rate
    if seconds <= threshold:
        return None
    return (f"note: {what} may take up to about {human_duration(seconds)} here: up to {passes:.2g} forward-backward "
            f"passes at {rate:.3g} images/s measured on this model; Ctrl-C stops it"
            + (" (rerun the same command to resume)" if resumable else ""))


def training_note(config, bundle, epochs_left: int, classifier, replicas: int = 1) -> str | None:
    """:func:`long_work_note` for the rest of a training run."""
    passes = training_passes(config, bundle.num_train, config.evaluation.n_test, epochs_left)
    return long_work_note(f"training {epochs_left} epochs", passes, classifier, bundle.input_shape, replicas,
                          resumable=True)
