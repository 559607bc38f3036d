"""Self-Guided Label Refinement (Li et al., "Soften to Defend: Towards
Adversarial Robustness via Self-Guided Label Refinement", CVPR 2024).

The refinement is three pure functions of tensors (equations as in
shared/method.md, per training example i with table row e_i):

    f~      = lam * softmax(z(x) / T) + (1 - lam) * softmax(z(x') / T)   (interpolate)
    e_i    <- alpha * e_i + (1 - alpha) * f~                              (EMA)
    y_soft  = r * e_i + (1 - r) * onehot(y_i)                             (mix)

and :class:`SoftLabelTable` holds the rows e_i as a non-trainable variable that
stays identical on every replica under ``tf.distribute``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def interpolated_prediction(logits_clean, logits_adv, lam, temperature=1.0):
    """f~ = lam * softmax(z_clean / T) + (1 - lam) * softmax(z_adv / T).

    Both predictions are constants: no gradient flows back through them.
    """
    p_clean = tf.nn.softmax(tf.stop_gradient(logits_clean) / temperature, axis=-1)
    p_adv = tf.nn.softmax(tf.stop_gradient(logits_adv) / temperature, axis=-1)
    return lam * p_clean + (1.0 - lam) * p_adv


def ema_rows(rows, prediction, alpha):
    """e <- alpha * e + (1 - alpha) * f~. A convex combination: rows stay on the simplex."""
    return alpha * rows + (1.0 - alpha) * prediction


def soft_target(rows, labels, num_classes, r):
    """y_soft = r * e + (1 - r) * onehot(y)."""
    return r * rows + (1.0 - r) * tf.one_hot(labels, num_classes, dtype=rows.dtype)


def soft_cross_entropy(logits, targets):
    """-sum_c y[c] * log softmax(z)[c], averaged over the batch."""
    return tf.reduce_mean(-tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1))


def row_entropy(rows: np.ndarray) -> float:
    """Mean entropy (nats) of table rows: 0 for one-hot rows, log C for uniform."""
    rows = np.asarray(rows, dtype=np.float64)
    return float(np.mean(-np.sum(rows * np.log(np.clip(rows, 1e-12, None)), axis=-1)))


class SoftLabelTable(keras.layers.Layer):
    """One soft-label row per training example, initialised to the one-hot label.

    The rows live in a non-trainable variable of shape (N, C), saved with the
    trainer's weights. Memory: N x C x 4 bytes in float32 (CIFAR-100: 50,000 x 100
    x 4 = 20 MB per replica; ImageNet: 1.28M x 1000 x 4 = 5.1 GB), half that with
    ``dtype="float16"``; arithmetic always runs in float32.
    """

    def __init__(self, labels, num_classes, dtype="float32", **kwargs):
        super().__init__(name=kwargs.pop("name", "soft_label_table"), **kwargs)
        labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)
        storage = tf.as_dtype(dtype)

        def one_hot_initializer(shape, dtype=None):
            return tf.one_hot(labels, self.num_classes, dtype=storage)

        # only_first_replica: every replica applies the same scatter itself, so no
        # cross-replica aggregation of writes is wanted.
        self.rows = self.add_weight(
            shape=(len(labels), self.num_classes),
            initializer=one_hot_initializer,
            dtype=storage.name,
            trainable=False,
            aggregation="only_first_replica",
            name="rows",
        )
        self.built = True

    def lookup(self, indices):
        return tf.cast(tf.gather(self.rows.value, indices), tf.float32)

    def assign_rows(self, indices, rows):
        """Write ``rows`` at ``indices`` on every replica.

        Under a multi-replica strategy each replica holds different examples, so
        the (index, row) pairs of all replicas are gathered first and every
        replica applies the same scatter: the copies never diverge.
        """
        rows = tf.cast(rows, self.rows.dtype)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            indices = context.all_gather(indices, axis=0)
            rows = context.all_gather(rows, axis=0)
        self.rows.value.scatter_update(tf.IndexedSlices(rows, indices))

    def numpy_rows(self) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(self.rows.value), dtype=np.float32)
