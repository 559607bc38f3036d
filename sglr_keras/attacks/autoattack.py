"""AutoAttack (Croce & Hein, ICML 2020): a fixed, parameter-free ensemble.

The suite runs its attacks in order, each only on the points that every earlier
attack failed to break; robust accuracy is the fraction of points that survive
all of them. It never looks inside an attack: each is a class with
``perturb(model, x, y)``.

Versions, with the reference implementation's settings:

- ``standard``: APGD-CE (no restarts, 100 iterations), APGD-T (targeted DLR, 9
  targets), FAB-T (9 targets), Square (5000 queries).
- ``plus``: APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square,
  APGD-T, FAB-T.
- ``rand`` (randomised models): APGD-CE and APGD-DLR with expectation over 20
  draws per gradient.

With ``norm="L2"`` the suite keeps only the APGD attacks (Square and FAB here are
L-inf only; the reference runs L2 FAB-T and Square too), so it is weaker than
the reference's L2 AutoAttack. ``label`` says so, and every table, JSON file and
model card carries the label next to the number.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sglr_keras.attacks.apgd import APGD
from sglr_keras.attacks.fab import FAB
from sglr_keras.attacks.losses import check_attack_settings
from sglr_keras.attacks.square import Square
from sglr_keras.attacks.base import CallableAttack, break_remaining

VERSIONS = ("standard", "plus", "rand")


def suite(eps: float, norm: str = "Linf", version: str = "standard", seed: int = 0) -> list:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if version == "standard":
        attacks = [APGD(eps, norm, "ce", seed=seed),
                   APGD(eps, norm, targeted=True, n_target_classes=9, seed=seed),
                   FAB(eps, targeted=True, n_target_classes=9, seed=seed),
                   Square(eps, n_queries=5000, seed=seed)]
    elif version == "plus":
        attacks = [APGD(eps, norm, "ce", n_restarts=5, seed=seed), APGD(eps, norm, "dlr", n_restarts=5, seed=seed),
                   FAB(eps, targeted=False, n_restarts=5, seed=seed), Square(eps, n_queries=5000, seed=seed),
                   APGD(eps, norm, targeted=True, n_target_classes=9, seed=seed),
                   FAB(eps, targeted=True, n_target_classes=9, seed=seed)]
    else:
        attacks = [APGD(eps, norm, "ce", eot_iter=20, seed=seed), APGD(eps, norm, "dlr", eot_iter=20, seed=seed)]
    if norm != "Linf":
        attacks = [a for a in attacks if isinstance(a, APGD)]
    return attacks


class AutoAttack(CallableAttack):
    """AutoAttack (Croce & Hein 2020) as one attack: ``version="standard"`` runs
    APGD-CE, APGD-T, FAB-T and Square (5000 queries) in sequence, each on the
    points still robust; ``run`` reports robust accuracy after each stage. For
    the robust accuracy with its stages, use ``evaluate(..., attacks=["autoattack"])``.

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(4, 8, 8, 1).astype("float32"), np.array([0, 1, 2, 0])
    >>> x_adv = AutoAttack(eps=0.1)(model, x, y)  # doctest: +SKIP
    >>> AutoAttack(eps=0.1).name
    'autoattack'
    """

    name = "autoattack"
    runs_eagerly = True

    def __init__(self, eps=8 / 255, norm="Linf", version="standard", seed=0):
        check_attack_settings("AutoAttack", eps, norm)
        self.eps, self.norm, self.version = eps, norm, version
        self.attacks = suite(eps, norm, version, seed)
        partial = norm != "Linf" and version != "rand"
        self.label = ("AutoAttack-L2 partial (" + " + ".join(a.name.upper() for a in self.attacks) + ")"
                      if partial else f"AutoAttack ({version})")
        self.notes = [] if not partial else [
            "Square and FAB are L-inf only here; this L2 suite ran the APGD attacks alone "
            "(the reference L2 AutoAttack also runs FAB-T and Square), so it may overestimate robustness"]

    def perturb(self, model, x, y):
        """The suite as a plain attack: each point keeps the first adversarial
        example any stage finds (points no stage breaks come back unchanged)."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int32)
        predict = self.predictor(model)

        def attack_run(todo, attack):
            candidate = np.asarray(attack.perturb(model, tf.constant(x[todo]), tf.constant(y[todo])))
            fooled = np.argmax(predict(tf.constant(candidate)).numpy(), axis=-1) != y[todo]
            return candidate, fooled

        return break_remaining(x, self.clean_pass(model, x, y)[3], self.attacks, attack_run)

    def run(self, runner, x, y, clean_correct, on_stage=None, on_batch=None):
        """Attack in sequence; returns one AttackResult per stage, each with the
        robust mask after that stage (cumulative)."""
        robust = clean_correct.copy()
        stages = []
        for attack in self.attacks:
            if on_stage:
                on_stage(attack.name, int(robust.sum()))
            result = runner.attack(attack, x, y, robust, on_batch)
            robust = result.robust_mask
            stages.append(result)
        return stages
