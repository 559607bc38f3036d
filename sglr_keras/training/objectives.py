"""Training objectives: one small class per method.

An objective says which forward on the clean input it needs (``clean_forward``),
turns labels into training targets and computes the loss from logits. SGLR's
objectives also own the soft-label table; their ``refine`` computes the new
table rows (a pure function of the batch, ``docs/method.md`` steps 2-4), which
the trainer writes with an explicit step before the loss reads them, as the
reference code does. Adding a method is one class here plus one line in
``training/recipe.py``'s mapping (``docs/adding_a_method.md``).
"""

from __future__ import annotations

import tensorflow as tf

from sglr_keras import sglr
from sglr_keras.attacks.losses import kl_divergence
from sglr_keras.sglr import soft_cross_entropy

# What an objective needs from a forward pass on the clean input x.
NO_CLEAN = "none"              # nothing
CONSTANT_CLEAN = "constant"    # logits, no gradient (SGLR's clean prediction)
TRAINED_CLEAN = "trained"      # logits the loss differentiates (TRADES's natural term)


def smoothed_labels(labels, num_classes, smoothing):
    """Uniform label smoothing (Szegedy et al. 2016): (1 - s) * onehot(y) + s / C."""
    return (1.0 - smoothing) * tf.one_hot(labels, num_classes) + smoothing / tf.cast(num_classes, tf.float32)


def trades_kl(logits_clean, logits_adv):
    """KL(p(x) || p(x')) summed over classes, averaged over the batch (TRADES's
    'batchmean'); gradient flows through both arguments."""
    return tf.reduce_mean(kl_divergence(logits_clean, logits_adv))


def trades_loss(logits_clean, logits_adv, natural_targets, beta):
    """TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x')).

    ``natural_targets`` is a distribution per example: the one-hot label for
    TRADES, the refined soft label for TRADES + SGLR.
    """
    return soft_cross_entropy(logits_clean, natural_targets) + beta * trades_kl(logits_clean, logits_adv)


class Objective:
    """Cross-entropy of the adversarial logits against hard labels (PGD-AT,
    Madry et al. 2018; public name ``PGDAT``). Subclasses change the targets or
    the loss.

    >>> PGDAT(num_classes=10).name
    'pgd-at'
    """

    name = "pgd-at"
    clean_forward = NO_CLEAN
    soft_label_table = None

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)

    def set_epoch(self, epoch: int) -> bool:
        """Tell the objective which (0-based) epoch starts; True when its train
        step changes (the trainer then retraces it)."""
        return False

    def refine(self, indices, labels, logits_clean, logits_adv):
        """New soft-label rows for this batch, or None for objectives without a table."""
        return None

    def targets(self, labels, rows):
        return tf.one_hot(labels, self.num_classes)

    def loss(self, targets, logits_adv, logits_clean):
        return soft_cross_entropy(logits_adv, targets)


# The public name of plain PGD adversarial training.
PGDAT = Objective


class LabelSmoothing(Objective):
    """PGD-AT against uniformly smoothed labels, (1 - s) onehot(y) + s / C.

    >>> LabelSmoothing(num_classes=10, smoothing=0.1).smoothing
    0.1
    """

    name = "label-smoothing"

    def __init__(self, num_classes: int, smoothing: float):
        super().__init__(num_classes)
        self.smoothing = smoothing

    def targets(self, labels, rows):
        return smoothed_labels(labels, self.num_classes, self.smoothing)


class SGLR(Objective):
    """Self-Guided Label Refinement (Li et al., CVPR 2024), ``docs/method.md``:
    rows e <- alpha e + (1 - alpha) (lam p(x) + (1 - lam) p(x')), target
    r e + (1 - r) onehot(y), hard labels for the first ``warmup_epochs`` epochs.

    ``train_labels`` are the (possibly noisy) labels of the training examples in
    id order: row i of the table starts as their one-hot. The defaults are the
    ``paper`` preset; :meth:`from_preset` gives ``reference-code``.

    >>> import numpy as np
    >>> objective = SGLR.from_preset("reference-code", 10, np.arange(100) % 10, warmup_epochs=4)
    >>> (objective.r, objective.warmup_epochs)
    (1.0, 4)
    """

    @classmethod
    def from_preset(cls, preset: str, num_classes: int, train_labels, **overrides):
        """The named settings of docs/method.md ("paper", "reference-code"), with ``overrides``."""
        from sglr_keras.config import SGLR_PRESETS

        if preset not in SGLR_PRESETS:
            raise ValueError(f"unknown SGLR preset {preset!r}; choose one of {', '.join(SGLR_PRESETS)}")
        return cls(num_classes, train_labels, **{**SGLR_PRESETS[preset], **overrides})

    name = "sglr"

    def __init__(self, num_classes: int, train_labels, r: float = 0.2, alpha: float = 0.9, lam: float = 0.2,
                 temperature: float = 1.0, warmup_epochs: int = 0, clean_forward_training: bool = True,
                 table_dtype: str = "float32"):
        super().__init__(num_classes)
        self.r, self.alpha, self.lam, self.temperature = r, alpha, lam, temperature
        self.warmup_epochs = warmup_epochs
        self.clean_forward_training = clean_forward_training
        self.soft_label_table = sglr.SoftLabelTable(train_labels, num_classes, dtype=table_dtype)
        self.refining = warmup_epochs == 0

    @property
    def clean_forward(self):
        return CONSTANT_CLEAN if self.refining else NO_CLEAN

    def set_epoch(self, epoch: int) -> bool:
        refining = epoch >= self.warmup_epochs
        changed, self.refining = refining != self.refining, refining
        return changed

    def refine(self, indices, labels, logits_clean, logits_adv):
        if not self.refining:
            return None
        prediction = sglr.interpolated_prediction(logits_clean, logits_adv, self.lam, self.temperature)
        return sglr.ema_rows(self.soft_label_table.lookup(indices), prediction, self.alpha)

    def targets(self, labels, rows):
        if rows is None:
            return tf.one_hot(labels, self.num_classes)
        return sglr.soft_target(rows, labels, self.num_classes, self.r)


class TRADES(Objective):
    """TRADES (Zhang et al. 2019): CE on the clean logits plus beta * KL(p(x) ||
    p(x')); train it with the ``TradesKL`` attack.

    >>> TRADES(num_classes=10, beta=6.0).beta
    6.0
    """

    name = "trades"
    clean_forward = TRAINED_CLEAN

    def __init__(self, num_classes: int, beta: float):
        super().__init__(num_classes)
        self.beta = beta

    def loss(self, targets, logits_adv, logits_clean):
        return trades_loss(logits_clean, logits_adv, targets, self.beta)


class TRADESSGLR(SGLR):
    """TRADES with the refined soft label in its natural term; the table is fed
    from the loss's own training-mode forwards on x and x'.

    >>> import numpy as np
    >>> TRADESSGLR.from_preset("reference-code", 10, np.arange(20) % 10, beta=6.0, warmup_epochs=2).beta
    6.0
    """

    name = "trades-sglr"

    def __init__(self, num_classes: int, train_labels, beta: float, **sglr_settings):
        super().__init__(num_classes, train_labels, **sglr_settings)
        self.beta = beta

    @property
    def clean_forward(self):
        return TRAINED_CLEAN

    def loss(self, targets, logits_adv, logits_clean):
        return trades_loss(logits_clean, logits_adv, targets, self.beta)
