"""What every evaluation attack shares, written once:

- the call form ``attack(model, x, y)`` (= ``attack.perturb(model, x, y)``);
- the compiled-function cache: one ``tf.function`` per model and purpose, held
  weakly, so an attack neither keeps a model alive nor hands a new model the
  function traced for an old one that happened to have the same ``id``;
- the robust-subset loop: run after run (restarts, targets, the AutoAttack
  stages), attack only the points still robust and write the broken ones back;
- the random start: a uniform point of the eps-ball, or of its surface.

The model is only ever called with ``training=False``; its mode and weights are
never changed, and nothing is printed.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from sglr_keras.models.fused_batchnorm import folded_batch_norm


def random_start(x, eps, norm="Linf", generator: tf.random.Generator | None = None, surface: bool = False):
    """A random point around x: uniform in the L-inf ball, or a random direction
    and radius in the L2 ball (``surface=False``, not clipped: the caller
    projects); with ``surface=True`` a point on the ball's surface (Auto-PGD's
    start), clipped to [0, 1]. Drawn from ``generator`` when given (reproducible,
    also inside a traced function), else from TensorFlow's global generator."""
    rng = generator or tf.random
    axes = tf.range(1, tf.rank(x))
    if surface:
        if norm == "Linf":
            t = rng.uniform(tf.shape(x), -1.0, 1.0, dtype=x.dtype)
            t /= tf.reduce_max(tf.abs(t), axis=axes, keepdims=True)
        else:
            t = rng.normal(tf.shape(x), dtype=x.dtype)
            t /= tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True)) + 1e-12
        return tf.clip_by_value(x + eps * t, 0.0, 1.0)
    if norm == "Linf":
        return x + rng.uniform(tf.shape(x), -eps, eps, dtype=x.dtype)
    noise = rng.normal(tf.shape(x), dtype=x.dtype)
    noise /= tf.sqrt(tf.reduce_sum(tf.square(noise), axis=axes, keepdims=True)) + 1e-12
    radius = rng.uniform(tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0), 0, 1)
    return x + eps * radius * noise


def input_gradient(model, x, per_example: Callable):
    """``(logits, values, gradient)``: the model's logits at x (inference mode),
    ``per_example(logits)`` and the gradient of its sum with respect to x (zero
    where x does not reach it). Batch norms that follow a convolution run folded
    into it (``folded_batch_norm``: the same function, cheaper to differentiate)."""
    with folded_batch_norm(model), tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        values = per_example(logits)
    return logits, values, tape.gradient(values, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def break_remaining(x, robust: np.ndarray, runs: Iterable, attack_run: Callable) -> np.ndarray:
    """The robust-subset loop. For each item of ``runs`` (a restart, a target
    class, an attack of a suite), ``attack_run(todo, item)`` attacks the points
    ``todo`` (indices of those still robust) and returns ``(x_adv, broken)`` for
    them; broken points are written into the returned copy of ``x`` and leave
    ``robust`` (updated in place). Stops early once no point is left."""
    x_out = np.array(x, dtype=np.float32, copy=True)
    for item in runs:
        todo = np.flatnonzero(robust)
        if len(todo) == 0:
            break
        x_adv, broken = attack_run(todo, item)
        broken = np.asarray(broken, bool)
        x_out[todo[broken]] = np.asarray(x_adv)[broken]
        robust[todo[broken]] = False
    return x_out


class CallableAttack:
    """Base of the evaluation attacks: ``attack(model, x, y)`` is
    ``attack.perturb(model, x, y)``, adversarial examples for any classifier that
    maps images in [0, 1] to logits, within the attack's eps-ball and [0, 1]."""

    def __call__(self, model, x, y):
        return self.perturb(model, x, y)

    def compiled(self, model, key: str, build: Callable):
        """The function ``build(model_ref)`` made for ``model`` under ``key``, built
        once per live model. ``build`` receives a weak reference (call it to get
        the model) so the cached function does not keep the model alive."""
        cache = self.__dict__.setdefault("_compiled_cache", weakref.WeakKeyDictionary())
        per_model = cache.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build(weakref.ref(model))
        return per_model[key]

    def predictor(self, model):
        """``model(x, training=False)`` compiled, for this model."""
        return self.compiled(model, "predict", lambda ref: tf.function(
            lambda xb: ref()(xb, training=False), reduce_retracing=True))

    def clean_pass(self, model, x, y):
        """``(x, y, logits, robust)``: the inputs as float32 / int32 tensors, the
        model's clean logits and which points it gets right (numpy bools), where
        every attack that breaks only correctly classified points starts."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.convert_to_tensor(y), tf.int32)
        logits = model(x, training=False)
        return x, y, logits, (tf.argmax(logits, -1, output_type=tf.int32) == y).numpy()


def target_classes(logits, n_target_classes: int) -> list[np.ndarray]:
    """The targets of a targeted attack (APGD-T, FAB-T): per point, its 2nd, 3rd,
    ... highest-scoring classes on the clean input, ``n_target_classes`` of them
    at most (one array of labels per rank)."""
    ranked = tf.argsort(logits, axis=-1, direction="DESCENDING").numpy()
    return [ranked[:, rank] for rank in range(1, min(n_target_classes, ranked.shape[1] - 1) + 1)]
