"""Fast gradient sign method (Goodfellow et al., "Explaining and Harnessing
Adversarial Examples", ICLR 2015): one signed step of size eps on the CE loss."""

from sglr_keras.attacks.pgd import ascend
from sglr_keras.attacks.losses import check_attack_settings, cross_entropy


class FGSM:
    name = "fgsm"

    def __init__(self, eps=8 / 255):
        check_attack_settings("FGSM", eps, "Linf")
        self.eps = eps

    def perturb(self, model, x, y):
        return ascend(model, x, x, lambda logits: cross_entropy(logits, y), self.eps, self.eps, 1)
