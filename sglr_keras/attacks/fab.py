"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML 2020), L-inf.

A minimum-norm attack: at each step the decision boundary between the true
class y and a class t is linearised, and both the current point and the original
input are projected onto that hyperplane (within the box [0, 1]); the next point
is a convex combination of the two projections, extrapolated by eta, leaning
towards the original input (weight at most alpha_max) so the perturbation stays
small. Once a point is adversarial, it steps back towards the input by beta.
A point counts as broken at radius eps if an adversarial example within eps was
found.

FAB-T (``targeted=True``) runs once per target, the ``n_target_classes``
highest-scoring wrong classes of the clean input. Untargeted FAB takes, at each
step, the class whose linearised boundary is closest.

Arguments: eps, n_iter (100), n_restarts (1), targeted, n_target_classes (9),
alpha_max (0.1), eta (1.05), beta (0.9), seed.

Example::

    x_adv = FAB(eps=8 / 255, targeted=True).perturb(model, x, y)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sglr_keras.attacks.losses import check_attack_settings
from sglr_keras.attacks.base import CallableAttack, break_remaining, input_gradient, random_start, target_classes

BISECTION_STEPS = 30


def project_linf_hyperplane(x, w, f):
    """The smallest L-inf step d with f + w.d = 0 and 0 <= x + d <= 1, for a
    batch of flattened points x (N, D), normals w (N, D) and values f (N,).
    Solved by bisection on the radius r: the largest reachable change of f
    within radius r is monotone in r. Where the box makes the
    hyperplane unreachable, returns the step that gets closest."""
    direction = -tf.sign(f)[:, None] * tf.sign(w)  # move each coordinate so as to bring f to 0

    def step_at(r):
        return tf.clip_by_value(direction * r[:, None], -x, 1.0 - x)

    def reach(r):
        return tf.abs(tf.reduce_sum(w * step_at(r), axis=1))

    needed = tf.abs(f)
    lo, hi = tf.zeros_like(f), tf.ones_like(f)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        enough = reach(mid) >= needed
        hi = tf.where(enough, mid, hi)
        lo = tf.where(enough, lo, mid)
    return step_at(hi)


class FAB(CallableAttack):
    """FAB (Croce & Hein 2020): the minimal-perturbation attack, L-inf, targeted
    (``targeted=True``, AutoAttack's FAB-T) or not; kept within eps.

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(4, 8, 8, 1).astype("float32"), np.array([0, 1, 2, 0])
    >>> x_adv = FAB(eps=0.1, n_iter=10, targeted=False)(model, x, y)
    >>> bool(np.abs(np.asarray(x_adv) - x).max() <= 0.1 + 1e-6)
    True
    """

    # Compiles its own model calls; the bookkeeping between them is Python.
    runs_eagerly = True
    norm = "Linf"

    def __init__(self, eps=8 / 255, n_iter=100, n_restarts=1, targeted=True, n_target_classes=9,
                 alpha_max=0.1, eta=1.05, beta=0.9, seed=0):
        check_attack_settings("FAB", eps, "Linf", n_iter=n_iter, n_restarts=n_restarts,
                              n_target_classes=n_target_classes)
        self.eps, self.n_iter, self.n_restarts, self.targeted = eps, n_iter, n_restarts, targeted
        self.n_target_classes, self.alpha_max, self.eta, self.beta, self.seed = (
            n_target_classes, alpha_max, eta, beta, seed)
        self.name = "fab-t" if targeted else "fab"

    def _jacobian_fn(self, model):
        """Logits and the gradients of z_j - z_y for every class j (untargeted) or
        of z_t - z_y (targeted)."""
        def build(model_ref):
            @tf.function(reduce_retracing=True)
            def boundary(x, y, target):
                return input_gradient(model_ref(), x, lambda logits: tf.gather(logits, target, batch_dims=1)
                                      - tf.gather(logits, y, batch_dims=1))

            @tf.function(reduce_retracing=True)
            def all_boundaries(x, y):
                with tf.GradientTape(persistent=False) as tape:
                    tape.watch(x)
                    logits = model_ref()(x, training=False)
                jacobian = tape.batch_jacobian(logits, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # (N, C, ...)
                true = tf.gather(logits, y, batch_dims=1)
                true_grad = tf.gather(jacobian, y, batch_dims=1)
                return logits, logits - true[:, None], jacobian - true_grad[:, None]

            return boundary, all_boundaries

        return self.compiled(model, "boundaries", build)

    def _linearisation(self, model, x, y, target):
        """(logits, f, grad of f) of the boundary to step towards at x."""
        boundary, all_boundaries = self._jacobian_fn(model)
        if self.targeted:
            return boundary(x, y, target)
        logits, values, grads = all_boundaries(x, y)
        n, num_classes = values.shape
        flat = tf.reshape(grads, [n, num_classes, -1])
        # The closest linearised boundary in L-inf: |f_j| / ||grad f_j||_1; the true class is excluded.
        distance = tf.abs(values) / (tf.reduce_sum(tf.abs(flat), axis=-1) + 1e-12)
        distance = tf.where(tf.one_hot(y, num_classes) > 0, np.inf, distance)
        closest = tf.argmin(distance, axis=1, output_type=tf.int32)
        return logits, tf.gather(values, closest, batch_dims=1), tf.gather(grads, closest, batch_dims=1)

    @tf.function(reduce_retracing=True)
    def _step(self, x_flat, now_flat, w, f):
        """One FAB update from the linearised boundary f + w.(z - x_now) = 0."""
        step_now = project_linf_hyperplane(now_flat, w, f)
        # The same hyperplane seen from the original input: f(x) ~ f(x_now) + w.(x - x_now).
        f_orig = f + tf.reduce_sum(w * (x_flat - now_flat), axis=1)
        step_orig = project_linf_hyperplane(x_flat, w, f_orig)
        size_now = tf.reduce_max(tf.abs(step_now), axis=1)
        size_orig = tf.reduce_max(tf.abs(step_orig), axis=1)
        alpha = tf.minimum(size_now / (size_now + size_orig + 1e-12), self.alpha_max)[:, None]
        return tf.clip_by_value((1 - alpha) * (now_flat + self.eta * step_now)
                                + alpha * (x_flat + self.eta * step_orig), 0.0, 1.0)

    def _run(self, model, x, y, target, start):
        """The paper's loop (Croce & Hein 2020, Alg. 1): linearise at the current
        point, step, and once the new point is adversarial record it and move that
        point itself back towards x (x + beta (x_adv - x)), linearising there next."""
        n = int(x.shape[0])
        flat_shape = [n, -1]
        x_flat = tf.reshape(x, flat_shape)
        predict = self.predictor(model)
        x_now = start
        best = x.numpy().copy()
        best_norm = np.full(n, np.inf)
        for _ in range(self.n_iter):
            _, f, grad = self._linearisation(model, x_now, y, target)
            x_now = tf.reshape(self._step(x_flat, tf.reshape(x_now, flat_shape), tf.reshape(grad, flat_shape), f),
                               x.shape)
            # One forward more than linearising alone: is the new point adversarial?
            fooled = (tf.argmax(predict(x_now), -1, output_type=tf.int32) != y).numpy()
            norms = tf.reduce_max(tf.abs(tf.reshape(x_now - x, flat_shape)), axis=1).numpy()
            better = fooled & (norms < best_norm)
            best[better] = x_now.numpy()[better]
            best_norm[better] = norms[better]
            shrink = tf.reshape(tf.constant(fooled), [-1] + [1] * (len(x.shape) - 1))
            x_now = tf.where(shrink, x + self.beta * (x_now - x), x_now)
        return best, best_norm

    def perturb(self, model, x, y):
        """The smallest adversarial example found for each point if its L-inf norm
        is at most eps, else the clean point."""
        x, y, logits, robust = self.clean_pass(model, x, y)
        generator = tf.random.Generator.from_seed(self.seed)
        # Untargeted FAB starts towards the runner-up class and picks the closest boundary at every step.
        targets = target_classes(logits, self.n_target_classes if self.targeted else 1)
        runs = [(target, restart) for target in targets for restart in range(self.n_restarts)]

        def attack_run(todo, run):
            target, restart = run
            x_todo, y_todo = tf.gather(x, todo), tf.gather(y, todo)
            # Later restarts start at a random point of half the radius.
            start = x_todo if restart == 0 else tf.clip_by_value(
                random_start(x_todo, 0.5 * self.eps, "Linf", generator), 0.0, 1.0)
            best, best_norm = self._run(model, x_todo, y_todo, tf.constant(target[todo], tf.int32), start)
            return best, best_norm <= self.eps

        return tf.constant(break_remaining(x.numpy(), robust, runs, attack_run))
