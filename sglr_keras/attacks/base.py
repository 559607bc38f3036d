"""What every evaluation attack shares: the call form ``attack(model, x, y)``."""

from __future__ import annotations


class CallableAttack:
    """``attack(model, x, y)`` is ``attack.perturb(model, x, y)``: adversarial
    examples for any classifier that maps images in [0, 1] to logits, within the
    attack's eps-ball and [0, 1]. The model is only called (``training=False``),
    never changed."""

    def __call__(self, model, x, y):
        return self.perturb(model, x, y)
