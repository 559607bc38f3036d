"""The inner maximisation of adversarial training: attacks the trainer runs on
every batch.

Each is configured in its constructor and has one entry point,
``perturb(model, x, y, seeds=None)``. ``seeds`` is an int64 tensor (N, 2) with one
stateless seed per example (the trainer derives it from the run seed, the step
and the example index, so a resumed run and any replica layout draw the same
random start for the same example); without it the start is drawn from the
global generator. The model runs in inference mode, as in the reference code.

Example::

    attack = TrainingPGD(eps=8 / 255, step_size=2 / 255, steps=10)
    x_adv = attack.perturb(classifier, x, y)
"""

from __future__ import annotations

import tensorflow as tf

from sglr_keras.attacks.budget import check_budget
from sglr_keras.attacks.losses import cross_entropy, kl_divergence
from sglr_keras.attacks.pgd import ascend

# TRADES starts its attack from x + 0.001 * N(0, I) (Zhang et al. 2019, Alg. 1).
TRADES_INIT_STD = 0.001
START_DISTRIBUTIONS = ("uniform", "normal")


# splitmix64 (Steele, Lea & Flood 2014): a counter-based hash whose outputs pass
# BigCrush; one call hashes every (example, element) pair of a batch at once.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _splitmix(z):
    def shift(v, n):
        return tf.bitwise.right_shift(v, tf.constant(n, tf.uint64))

    z = tf.bitwise.bitwise_xor(z, shift(z, 30)) * tf.constant(_MIX1, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, shift(z, 27)) * tf.constant(_MIX2, tf.uint64)
    return tf.bitwise.bitwise_xor(z, shift(z, 31))


def _example_uniforms(seeds, count, offset=0):
    """U[0, 1) of shape (N, count): element j of example n is a pure function of
    ``seeds[n]`` (run seed and step, example id) and j, so an example draws the
    same numbers whatever the batch it is in, the replica layout or a resume."""
    seeds = tf.cast(seeds, tf.uint64)
    golden = tf.constant(_GOLDEN, tf.uint64)
    key = _splitmix(tf.bitwise.bitwise_xor(_splitmix(seeds[:, 0] * golden + 1), seeds[:, 1]))
    counters = tf.cast(tf.range(count), tf.uint64) + tf.constant(offset + 1, tf.uint64)
    bits = _splitmix(key[:, None] + counters[None, :] * golden)
    # The top 24 bits: exact in float32.
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(40, tf.uint64)), tf.float32) * (1.0 / 2**24)


def example_noise(x, seeds, distribution: str):
    """Noise shaped like ``x``: U(-1, 1) or N(0, 1), from one stateless seed per
    example (a vectorised counter-based draw; no per-example loop)."""
    if seeds is None:
        if distribution == "uniform":
            return tf.random.uniform(tf.shape(x), -1.0, 1.0, dtype=x.dtype)
        return tf.random.normal(tf.shape(x), dtype=x.dtype)
    count = tf.reduce_prod(tf.shape(x)[1:])
    if distribution == "uniform":
        noise = 2.0 * _example_uniforms(seeds, count) - 1.0
    else:  # Box-Muller on two independent uniform streams
        u1 = 1.0 - _example_uniforms(seeds, count)  # in (0, 1]: log is finite
        u2 = _example_uniforms(seeds, count, offset=2**40)
        noise = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * 3.141592653589793 * u2)
    return tf.cast(tf.reshape(noise, tf.shape(x)), x.dtype)


class NoAttack:
    """Standard (non-adversarial) training: the clean input is the training input."""

    name = "none"

    def perturb(self, model, x, y, seeds=None):
        return x


class TrainingPGD:
    """L-inf PGD on the cross-entropy (Madry et al. 2018), from a uniform point of
    the eps-ball clipped to [0, 1] (``random_start``) or from x itself.

    eps in [0, 1], step_size >= 0, steps >= 0.

    >>> attack = TrainingPGD(eps=8 / 255, step_size=2 / 255, steps=10)
    >>> attack.steps
    10
    """

    name = "pgd"

    def __init__(self, eps: float, step_size: float, steps: int, random_start: bool = True):
        _check_budget(eps, step_size, steps)
        self.eps, self.step_size, self.steps, self.random_start = eps, step_size, steps, random_start

    def perturb(self, model, x, y, seeds=None):
        if self.steps == 0:
            return x
        start = x + self.eps * example_noise(x, seeds, "uniform") if self.random_start else x
        y = tf.cast(y, tf.int32)
        return ascend(model, x, start, lambda logits: cross_entropy(logits, y), self.eps, self.step_size,
                      self.steps)


class TradesKL:
    """TRADES's attack: ascends KL(p(x) || p(x')) with L-inf PGD steps.

    ``start="normal"`` is the TRADES paper's x + 0.001 * N(0, I); ``start="uniform"``
    a uniform point of the eps-ball clipped to [0, 1], as the SGLR reference code
    starts its TRADES + SGLR attack.

    >>> TradesKL(eps=8 / 255, step_size=2 / 255, steps=10, start="uniform").start
    'uniform'
    """

    name = "trades-kl"

    def __init__(self, eps: float, step_size: float, steps: int, start: str = "normal"):
        _check_budget(eps, step_size, steps)
        if start not in START_DISTRIBUTIONS:
            raise ValueError(f"start must be one of {START_DISTRIBUTIONS}, got {start!r}")
        self.eps, self.step_size, self.steps, self.start = eps, step_size, steps, start

    def perturb(self, model, x, y=None, seeds=None):
        if self.steps == 0:
            return x
        logits_clean = tf.stop_gradient(model(x, training=False))
        scale = TRADES_INIT_STD if self.start == "normal" else self.eps
        start = x + scale * example_noise(x, seeds, self.start)
        return ascend(model, x, start, lambda logits: kl_divergence(logits_clean, logits), self.eps,
                      self.step_size, self.steps)


def _check_budget(eps, step_size, steps) -> None:
    # The shared rule; steps 0 is allowed here (no attack: standard training).
    check_budget("training attack", eps, "Linf", step_size)
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"training attack: steps must be a whole number >= 0, got {steps!r}")
