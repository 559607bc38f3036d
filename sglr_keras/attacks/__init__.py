"""Adversarial attacks, one per module, each a class configured in its
constructor with one entry point, ``perturb(model, x, y) -> x_adv`` (the
:class:`Attack` protocol); the AutoAttack suite is one of them. A constructor
refuses settings it would misread. :func:`build_attack` is the registry: the
names below are the only place attack names are listed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# Evaluation attacks by name (``sglr eval --attack``, experiment files).
ATTACK_NAMES = ("fgsm", "pgd", "pgd-reference", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square",
                "autoattack")
# What ``--attack all`` runs.
ALL = ("fgsm", "pgd", "cw", "autoattack")
L_INF_ONLY = ("fgsm", "fab", "fab-t", "square")
# The SGLR authors' PGD-20 (their README): step 0.003 at eps 0.031, i.e. eps * 3/31.
REFERENCE_PGD_STEP_RATIO = 0.003 / 0.031


@runtime_checkable
class Attack(Protocol):
    name: str
    eps: float

    def perturb(self, model, x, y):
        """Adversarial examples for (x, y) within the attack's eps-ball and [0, 1]."""


def build_attack(name: str, eps: float, norm: str = "Linf", steps: int | None = None,
                 step_size: float | None = None, seed: int = 0, version: str = "standard") -> Attack:
    """Attack ``name`` with the field's default budget: PGD-20, CW-30 (step eps/4),
    FGSM, the AutoAttack members with the reference settings, and the suite."""
    from sglr_keras.attacks.apgd import APGD
    from sglr_keras.attacks.autoattack import AutoAttack
    from sglr_keras.attacks.fab import FAB
    from sglr_keras.attacks.fgsm import FGSM
    from sglr_keras.attacks.pgd import CW, PGD, ReferencePGD
    from sglr_keras.attacks.square import Square

    if name in L_INF_ONLY and norm != "Linf":
        raise ValueError(f"{name} is an L-inf attack here; use norm Linf")
    step_size = step_size if step_size is not None else eps / 4
    builders = {
        "fgsm": lambda: FGSM(eps),
        "pgd": lambda: PGD(eps, step_size, steps or 20, norm=norm),
        "pgd-reference": lambda: ReferencePGD(eps, eps * REFERENCE_PGD_STEP_RATIO, steps or 20, norm=norm),
        "cw": lambda: CW(eps, step_size, steps or 30, norm=norm),
        "apgd-ce": lambda: APGD(eps, norm, "ce", n_iter=steps or 100, seed=seed),
        "apgd-dlr": lambda: APGD(eps, norm, "dlr", n_iter=steps or 100, seed=seed),
        "apgd-t": lambda: APGD(eps, norm, targeted=True, n_iter=steps or 100, seed=seed),
        "fab": lambda: FAB(eps, n_iter=steps or 100, targeted=False, seed=seed),
        "fab-t": lambda: FAB(eps, n_iter=steps or 100, targeted=True, seed=seed),
        "square": lambda: Square(eps, n_queries=steps or 5000, seed=seed),
        "autoattack": lambda: AutoAttack(eps, norm, version, seed),
    }
    if name not in builders:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACK_NAMES)}")
    return builders[name]()
