"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks", ICML 2020).

PGD without a step size to tune: the step starts at 2 eps and is halved at
checkpoints when progress stalls, after which the attack restarts from the best
point found; steps use momentum 0.75. Checkpoints fall every k iterations, k
starting at 0.22 N and shrinking by 0.03 N per checkpoint down to 0.06 N. At a
checkpoint the step is halved for a point if (1) the loss increased in at most
rho = 75% of the steps since the previous checkpoint, or (2) the step was not
halved at the previous checkpoint and the best loss has not improved since.

Arguments: eps, norm "Linf" or "L2", loss "ce" or "dlr" (untargeted) or targeted
DLR with ``targeted=True`` (APGD-T: the targets are the ``n_target_classes``
highest-scoring wrong classes of the clean input, one run each), n_iter (100),
n_restarts (1), eot_iter (1; 20 for randomised models), seed.

Example::

    x_adv = APGD(eps=8 / 255, loss="ce").perturb(model, x, y)
    x_adv = APGD(eps=8 / 255, targeted=True, n_target_classes=9).perturb(model, x, y)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sglr_keras.attacks.losses import check_attack_settings, cross_entropy, dlr, targeted_dlr
from sglr_keras.attacks.pgd import project
from sglr_keras.attacks.base import CallableAttack, break_remaining, input_gradient, random_start, target_classes

MOMENTUM = 0.75
RHO = 0.75


def _per_example(values, ndim):
    return tf.reshape(values, [-1] + [1] * (ndim - 1))


def _lp_normalise(v, norm):
    if norm == "Linf":
        return tf.sign(v)
    axes = list(range(1, len(v.shape)))
    return v / (tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True)) + 1e-12)


class APGD(CallableAttack):
    """Auto-PGD (Croce & Hein 2020): step-size free PGD with momentum, on the
    cross-entropy (``loss="ce"``), the DLR loss (``"dlr"``) or, ``targeted=True``,
    the targeted DLR loss over ``n_target_classes`` classes; L-inf or L2.

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(4, 8, 8, 1).astype("float32"), np.array([0, 1, 2, 0])
    >>> x_adv = APGD(eps=0.1, loss="ce", n_iter=10)(model, x, y)
    >>> x_adv.shape
    TensorShape([4, 8, 8, 1])
    """

    # Compiles its own model calls; the bookkeeping between them is Python.
    runs_eagerly = True

    def __init__(self, eps=8 / 255, norm="Linf", loss="ce", n_iter=100, n_restarts=1, targeted=False,
                 n_target_classes=9, eot_iter=1, seed=0):
        check_attack_settings("APGD", eps, norm, n_iter=n_iter, n_restarts=n_restarts,
                              n_target_classes=n_target_classes, eot_iter=eot_iter)
        if not targeted and loss not in ("ce", "dlr"):
            raise ValueError(f"APGD: loss must be 'ce' or 'dlr' (or targeted=True), got {loss!r}")
        self.eps, self.norm, self.loss, self.n_iter = eps, norm, loss, n_iter
        self.n_restarts, self.targeted, self.n_target_classes, self.seed = n_restarts, targeted, n_target_classes, seed
        self.eot_iter = eot_iter
        self.name = "apgd-t" if targeted else f"apgd-{loss}"
        self.first_interval = max(int(0.22 * n_iter), 1)
        self.min_interval = max(int(0.06 * n_iter), 1)
        self.interval_decrease = max(int(0.03 * n_iter), 1)

    # --- compiled pieces ---------------------------------------------------------

    def _loss_and_grad(self, model):
        loss_name, targeted = self.loss, self.targeted

        def build(model_ref):
            @tf.function(reduce_retracing=True)
            def loss_and_grad(x, y, target):
                def per_example(logits):
                    if targeted:
                        return targeted_dlr(logits, y, target)
                    return cross_entropy(logits, y) if loss_name == "ce" else dlr(logits, y)

                return input_gradient(model_ref(), x, per_example)
            return loss_and_grad

        return self.compiled(model, "loss_and_grad", build)

    def _gradient(self, model, x, y, target):
        """Logits, per-example loss and input gradient; for a randomised model the
        gradient is averaged over ``eot_iter`` draws (expectation over
        transformation, Athalye et al. 2018)."""
        loss_and_grad = self._loss_and_grad(model)
        logits, loss, grad = loss_and_grad(x, y, target)
        for _ in range(self.eot_iter - 1):
            logits, more_loss, more_grad = loss_and_grad(x, y, target)
            loss, grad = loss + more_loss, grad + more_grad
        return logits, loss / self.eot_iter, grad / self.eot_iter

    # --- one run -----------------------------------------------------------------------

    def _run(self, model, x, y, target, generator):
        """One APGD run; returns (adversarial points, still-correct mask)."""
        ndim = len(x.shape)
        n = int(x.shape[0])
        x_adv = random_start(x, self.eps, self.norm, generator, surface=True)
        logits, loss, grad = self._gradient(model, x_adv, y, target)
        correct = (tf.argmax(logits, -1, output_type=tf.int32) == y).numpy()
        x_best_adv = x_adv.numpy()
        loss_best = loss.numpy()
        x_best, grad_best = x_adv, grad
        step = np.full(n, 2.0 * self.eps, np.float32)
        x_previous = x_adv
        losses = [loss.numpy()]
        interval, since_checkpoint = self.first_interval, 0
        loss_best_at_checkpoint = loss_best.copy()
        halved_at_checkpoint = np.ones(n, bool)
        for i in range(self.n_iter):
            momentum = MOMENTUM if i > 0 else 1.0
            step_t = _per_example(tf.constant(step), ndim)
            z = project(x_adv + step_t * _lp_normalise(grad, self.norm), x, self.eps, self.norm)
            x_next = project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_previous),
                             x, self.eps, self.norm)
            x_previous, x_adv = x_adv, x_next
            logits, loss, grad = self._gradient(model, x_adv, y, target)
            fooled = (tf.argmax(logits, -1, output_type=tf.int32) != y).numpy()
            x_best_adv[fooled] = x_adv.numpy()[fooled]
            correct &= ~fooled
            loss_np = loss.numpy()
            losses.append(loss_np)
            improved = loss_np > loss_best
            x_best = tf.where(_per_example(tf.constant(improved), ndim), x_adv, x_best)
            grad_best = tf.where(_per_example(tf.constant(improved), ndim), grad, grad_best)
            loss_best = np.where(improved, loss_np, loss_best)
            since_checkpoint += 1
            if since_checkpoint == interval:
                recent = np.asarray(losses[-interval - 1:])
                increases = (recent[1:] > recent[:-1]).sum(axis=0)
                oscillating = increases <= interval * RHO
                stalled = ~halved_at_checkpoint & (loss_best_at_checkpoint >= loss_best)
                halve = oscillating | stalled
                halved_at_checkpoint = halve
                loss_best_at_checkpoint = loss_best.copy()
                if halve.any():
                    step = np.where(halve, step / 2.0, step).astype(np.float32)
                    mask = _per_example(tf.constant(halve), ndim)
                    x_adv = tf.where(mask, x_best, x_adv)
                    grad = tf.where(mask, grad_best, grad)
                interval = max(interval - self.interval_decrease, self.min_interval)
                since_checkpoint = 0
        return x_best_adv, correct

    # --- entry point ----------------------------------------------------------------

    def perturb(self, model, x, y):
        """Adversarial examples for (x, y): for each point, the first point found
        that the model misclassifies, else the clean point."""
        x, y, logits, robust = self.clean_pass(model, x, y)
        generator = tf.random.Generator.from_seed(self.seed)
        if self.targeted:
            targets = target_classes(logits, self.n_target_classes)
            runs = [target for target in targets for _ in range(self.n_restarts)]
        else:
            runs = [None] * self.n_restarts

        def attack_run(todo, target):
            target_t = tf.constant(target[todo] if target is not None else np.zeros(len(todo)), tf.int32)
            x_adv, correct = self._run(model, tf.gather(x, todo), tf.gather(y, todo), target_t, generator)
            return x_adv, ~correct

        return tf.constant(break_remaining(x.numpy(), robust, runs, attack_run))


def checkpoint_iterations(n_iter: int) -> list[int]:
    """The iterations at which APGD checks progress (for documentation and tests)."""
    first, minimum, decrease = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    points, at, interval = [], 0, first
    while at + interval <= n_iter:
        at += interval
        points.append(at)
        interval = max(interval - decrease, minimum)
    return points

