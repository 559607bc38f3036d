"""Training losses other than SGLR's, as pure functions of tensors."""

import tensorflow as tf

from sglr_keras.sglr import soft_cross_entropy


def smoothed_labels(labels, num_classes, smoothing):
    """Uniform label smoothing (Szegedy et al. 2016): (1 - s) * onehot(y) + s / C."""
    return (1.0 - smoothing) * tf.one_hot(labels, num_classes) + smoothing / tf.cast(num_classes, tf.float32)


def trades_kl(logits_clean, logits_adv):
    """KL(p(x) || p(x')) summed over classes, averaged over the batch (TRADES's
    'batchmean'); gradient flows through both arguments."""
    log_p_clean = tf.nn.log_softmax(logits_clean, axis=-1)
    log_p_adv = tf.nn.log_softmax(logits_adv, axis=-1)
    return tf.reduce_mean(tf.reduce_sum(tf.exp(log_p_clean) * (log_p_clean - log_p_adv), axis=-1))


def trades_loss(logits_clean, logits_adv, natural_targets, beta):
    """TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x')).

    ``natural_targets`` is a distribution per example: the one-hot label for
    TRADES, the refined soft label for TRADES + SGLR.
    """
    return soft_cross_entropy(logits_clean, natural_targets) + beta * trades_kl(logits_clean, logits_adv)
