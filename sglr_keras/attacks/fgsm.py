"""Fast gradient sign method (Goodfellow et al., "Explaining and Harnessing
Adversarial Examples", ICLR 2015): one signed step of size eps on the CE loss."""

from sglr_keras.attacks.pgd import ascend
from sglr_keras.attacks.losses import check_attack_settings, cross_entropy
from sglr_keras.attacks.base import CallableAttack


class FGSM(CallableAttack):
    """One signed-gradient step of size eps (Goodfellow et al. 2015).

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(4, 8, 8, 1).astype("float32"), np.array([0, 1, 2, 0])
    >>> x_adv = FGSM(eps=0.1)(model, x, y)
    >>> bool(np.abs(np.asarray(x_adv) - x).max() <= 0.1 + 1e-6)
    True
    """

    name = "fgsm"

    def __init__(self, eps=8 / 255):
        check_attack_settings("FGSM", eps, "Linf")
        self.eps = eps

    def perturb(self, model, x, y):
        return ascend(model, x, x, lambda logits: cross_entropy(logits, y), self.eps, self.eps, 1)
