"""Self-Guided Label Refinement (Li et al., "Soften to Defend: Towards
Adversarial Robustness via Self-Guided Label Refinement", CVPR 2024).

The refinement is three pure functions of tensors (equations as in
docs/method.md, per training example i with table row e_i):

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
        variable = self.rows.value
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            indices, rows = gather_across_replicas(context, indices, rows, pad_index=self.rows.shape[0])
            # Every replica now holds the same pairs, so each writes its own copy
            # directly; the distributed variable's update path would try to
            # aggregate the write across devices, which fails across workers.
            variable = variable._get_on_device_or_primary()
        variable.scatter_update(tf.IndexedSlices(tf.cast(rows, self.rows.dtype), indices))

    def numpy_rows(self) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(self.rows.value), dtype=np.float32)


def gather_across_replicas(context, indices, rows, pad_index: int):
    """The (index, row) pairs of every replica, in replica order, on every replica.

    Built from all-reduce alone (``ReplicaContext.all_gather`` fails under
    MultiWorkerMirroredStrategy in TF 2.21): each replica pads its pairs to the
    largest batch (index ``pad_index``, zero rows), writes them into its own slot
    of an otherwise zero (replicas, batch, ...) tensor, and the sum over replicas
    is the concatenation. Adding zeros is exact, so the rows arrive bit for bit.
    """
    replicas = context.num_replicas_in_sync
    indices = tf.cast(indices, tf.int32)
    rows = tf.cast(rows, tf.float32)
    slot = tf.one_hot(context.replica_id_in_sync_group, replicas, dtype=tf.int32)
    size = tf.shape(indices)[0]
    padding = tf.reduce_max(context.all_reduce("SUM", slot * size)) - size
    indices = tf.pad(indices, [[0, padding]], constant_values=pad_index)
    rows = tf.pad(rows, [[0, padding], [0, 0]])
    all_indices = tf.reshape(context.all_reduce("SUM", slot[:, None] * indices[None]), [-1])
    all_rows = context.all_reduce("SUM", tf.cast(slot, tf.float32)[:, None, None] * rows[None])
    all_rows = tf.reshape(all_rows, [-1, tf.shape(rows)[1]])
    real = all_indices < pad_index
    return tf.boolean_mask(all_indices, real), tf.boolean_mask(all_rows, real)
