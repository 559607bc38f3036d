"""Per-example losses that attacks ascend. All take logits (N, C) and int labels (N,)."""


import tensorflow as tf


def check_attack_settings(name: str, eps: float, norm: str = "Linf", **counts: int) -> None:
    """Refuse settings an attack would silently misread: a norm other than Linf/L2,
    an eps that is not a finite positive number (at most 1 for L-inf), counts
    (iterations, restarts, queries, targets) below 1."""
    from sglr_keras.attacks.budget import check_budget

    check_budget(name, eps, norm, **counts)


def cross_entropy(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def cw_margin(logits, labels):
    """Carlini-Wagner margin max_{j != y} z_j - z_y: positive iff misclassified."""
    num_classes = tf.shape(logits)[-1]
    true_mask = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    true_logit = tf.reduce_sum(logits * true_mask, axis=-1)
    other_logit = tf.reduce_max(logits - 1e9 * true_mask, axis=-1)
    return other_logit - true_logit


def dlr(logits, labels):
    """Difference of logits ratio (Croce & Hein 2020, eq. 6), scale invariant:
    -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), pi the descending order."""
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
    denominator = sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12
    return cw_margin(logits, labels) / denominator


def targeted_dlr(logits, labels, targets):
    """Targeted DLR (Croce & Hein 2020, eq. 7): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    num_classes = tf.shape(logits)[-1]
    z_true = tf.reduce_sum(logits * tf.one_hot(labels, num_classes, dtype=logits.dtype), axis=-1)
    z_target = tf.reduce_sum(logits * tf.one_hot(targets, num_classes, dtype=logits.dtype), axis=-1)
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
    denominator = sorted_logits[:, 0] - 0.5 * (sorted_logits[:, 2] + sorted_logits[:, 3]) + 1e-12
    return -(z_true - z_target) / denominator


def kl_divergence(logits_p, logits_q):
    """KL(p || q) per example, p = softmax(logits_p), q = softmax(logits_q); the
    TRADES regulariser (Zhang et al. 2019) and the loss its attack ascends."""
    log_p = tf.nn.log_softmax(logits_p, axis=-1)
    log_q = tf.nn.log_softmax(logits_q, axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


LOSSES = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}
