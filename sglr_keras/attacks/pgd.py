"""Projected gradient descent (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018).

Ascends a per-example loss by signed (L-inf) or normalised (L2) gradient steps,
projecting back onto the eps-ball around x and the pixel range [0, 1].

Arguments: eps (L-inf: (0, 1]; L2: > 0), step_size, steps >= 0, random_start,
loss in {"ce", "cw"} (CW-inf is PGD on the margin loss), restarts >= 1: the
worst case over restarts is kept per example.

Example::

    attack = PGD(eps=8 / 255, step_size=2 / 255, steps=20)
    x_adv = attack.perturb(model, x, y)   # x: (N, H, W, C) in [0, 1], y: (N,)
"""

from __future__ import annotations

import math

import tensorflow as tf

from sglr_keras.attacks.losses import LOSSES, check_attack_settings
from sglr_keras.attacks.base import CallableAttack, random_start  # noqa: F401  (random_start: re-exported)
from sglr_keras.models.fused_batchnorm import folded_batch_norm


def project(x_adv, x, eps, norm="Linf"):
    """Project onto the eps-ball around x (L-inf or L2) intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        axes = tf.range(1, tf.rank(delta))
        norms = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes, keepdims=True) + 1e-12)
        delta = delta * tf.minimum(1.0, eps / norms)
    return tf.clip_by_value(x + delta, 0.0, 1.0)


def ascend(model, x, x_start, loss_fn, eps, step_size, steps, norm="Linf"):
    """``steps`` projected ascent steps on ``loss_fn(logits)`` from ``x_start``.

    The model runs in inference mode (batch-norm statistics frozen), as the
    reference code does during training, with each batch norm that follows a
    convolution folded into it once for all steps (``folded_batch_norm``: the
    same function, without the batch norm's passes). The loop is a
    ``tf.while_loop``, so the graph does not grow with ``steps``.
    """
    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(loss_fn(model(x_adv, training=False)))
        grad = tape.gradient(loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if norm == "Linf":
            direction = tf.sign(grad)
        else:
            axes = tf.range(1, tf.rank(grad))
            direction = grad / (tf.sqrt(tf.reduce_sum(tf.square(grad), axis=axes, keepdims=True)) + 1e-12)
        return i + 1, project(x_adv + step_size * direction, x, eps, norm)

    # An explicit while_loop: Keras traces train_step without AutoGraph.
    with folded_batch_norm(model):
        _, x_adv = tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), project(x_start, x, eps, norm)))
    return tf.stop_gradient(x_adv)


class PGD(CallableAttack):
    """L-inf or L2 PGD (Madry et al. 2018) on the cross-entropy (``loss="ce"``)
    or the CW margin (``loss="cw"``), from a random start, ``restarts`` times
    (the first restart that fools the model wins). eps > 0, step_size > 0.

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(4, 8, 8, 1).astype("float32"), np.array([0, 1, 2, 0])
    >>> x_adv = PGD(eps=0.1, step_size=0.025, steps=10)(model, x, y)
    >>> bool(np.abs(np.asarray(x_adv) - x).max() <= 0.1 + 1e-6)
    True
    """

    name = "pgd"

    def __init__(self, eps=8 / 255, step_size=2 / 255, steps=20, random_start=True, loss="ce",
                 norm="Linf", restarts=1, generator: tf.random.Generator | None = None):
        check_attack_settings("PGD", eps, norm, steps=steps, restarts=restarts)
        if loss not in LOSSES:
            raise ValueError(f"PGD: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"PGD: step_size must be a finite number > 0, got {step_size!r}")
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.random_start, self.loss, self.norm, self.restarts = random_start, loss, norm, restarts
        # Holding the generator (a variable) keeps draws reproducible inside a traced
        # function: resetting its seed resets the random starts.
        self.generator = generator

    def perturb(self, model, x, y):
        """Adversarial examples for (x, y); over restarts, the first that fools the model wins."""
        loss = LOSSES[self.loss]
        y = tf.cast(y, tf.int32)
        best, fooled = None, None
        for _ in range(self.restarts):
            start = random_start(x, self.eps, self.norm, self.generator) if self.random_start else x
            x_adv = ascend(model, x, start, lambda logits: loss(logits, y), self.eps, self.step_size,
                           self.steps, self.norm)
            fools = tf.argmax(model(x_adv, training=False), -1, output_type=tf.int32) != y
            if best is None:
                best, fooled = x_adv, fools
            else:
                take = fools & ~fooled
                best = tf.where(tf.reshape(take, [-1, 1, 1, 1]), x_adv, best)
                fooled = fooled | take
        return best


class CW(PGD):
    """CW-inf: PGD on the Carlini-Wagner margin loss (max_{j != y} z_j - z_y).

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(4, 8, 8, 1).astype("float32"), np.array([0, 1, 2, 0])
    >>> x_adv = CW(eps=0.1, steps=30)(model, x, y)
    >>> x_adv.shape
    TensorShape([4, 8, 8, 1])
    """

    name = "cw"

    def __init__(self, eps=8 / 255, step_size=2 / 255, steps=30, random_start=True, norm="Linf", restarts=1,
                 generator: tf.random.Generator | None = None):
        super().__init__(eps, step_size, steps, random_start, "cw", norm, restarts, generator)


class ReferencePGD(PGD):
    """PGD as the SGLR authors evaluate (their README: eps 0.031, step 0.003, 20
    steps): every point is attacked and counted by its adversarial prediction
    alone, with no clean-correct mask."""

    name = "pgd-reference"
    attacks_all_points = True
