"""Clean and robust accuracy of any classifier mapping [0, 1] images to logits.

Robust accuracy counts a point as robust when the model classifies both the
clean input and the attacked input correctly (the AutoAttack convention).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable

import numpy as np
import tensorflow as tf

from sglr_keras.attacks import ALL, ATTACK_NAMES, build_attack  # noqa: F401  (ALL: re-exported)

# Float32 rounding of x + delta may exceed eps by an ulp; anything beyond this is a bug.
BUDGET_TOLERANCE = 1e-5


class AttackBudgetError(RuntimeError):
    """An attack left its eps-ball or the pixel range: its number must not be reported."""


@dataclass
class AttackResult:
    name: str
    robust_accuracy: float
    seconds: float
    robust_mask: np.ndarray = field(repr=False)


class ModelRunner:
    """Compiled prediction and attack functions for one model, traced once and
    reused across batches and epochs."""

    def __init__(self, model, batch_size: int = 256):
        self.model, self.batch_size = model, batch_size
        self._predict = tf.function(lambda xb: model(xb, training=False), reduce_retracing=True)
        self._perturb = {}

    def logits(self, x: np.ndarray) -> np.ndarray:
        batches = [self._predict(tf.constant(x[i:i + self.batch_size])).numpy()
                   for i in range(0, len(x), self.batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)

    def correct(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=-1) == y

    def attack(self, attack, x: np.ndarray, y: np.ndarray, clean_correct: np.ndarray,
               on_batch: Callable[[int], None] | None = None) -> AttackResult:
        """Attack the points of ``x`` classified correctly; robust accuracy is over all of ``x``."""
        if id(attack) not in self._perturb:
            self._perturb[id(attack)] = (
                (lambda xb, yb: attack.perturb(self.model, xb, yb)) if getattr(attack, "runs_eagerly", False)
                else tf.function(lambda xb, yb: attack.perturb(self.model, xb, yb), reduce_retracing=True))
        perturb = self._perturb[id(attack)]
        start = time.perf_counter()
        # The SGLR authors' protocol attacks every point and counts the adversarial
        # prediction alone (a misclassified clean point may turn correct).
        every_point = getattr(attack, "attacks_all_points", False)
        robust = np.ones_like(clean_correct) if every_point else clean_correct.copy()
        targets = np.arange(len(clean_correct)) if every_point else np.flatnonzero(clean_correct)
        for i in range(0, len(targets), self.batch_size):
            chunk = targets[i:i + self.batch_size]
            x_adv = np.asarray(perturb(tf.constant(x[chunk]), tf.constant(y[chunk].astype(np.int32))))
            check_budget(x[chunk], x_adv, attack.eps, getattr(attack, "norm", "Linf"))
            robust[chunk] = np.argmax(self._predict(tf.constant(x_adv)).numpy(), axis=-1) == y[chunk]
            if on_batch:
                on_batch(len(chunk))
        accuracy = float(robust.mean()) if len(robust) else 0.0
        return AttackResult(attack.name, accuracy, time.perf_counter() - start, robust)


def check_budget(x, x_adv, eps: float, norm: str = "Linf") -> None:
    x, x_adv = np.asarray(x), np.asarray(x_adv)
    if x_adv.min() < -BUDGET_TOLERANCE or x_adv.max() > 1 + BUDGET_TOLERANCE:
        raise AttackBudgetError(f"attack left the pixel range: [{x_adv.min()}, {x_adv.max()}]")
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if norm == "Linf" else np.linalg.norm(delta, axis=1)
    if len(size) and size.max() > eps + BUDGET_TOLERANCE:
        raise AttackBudgetError(f"attack left the {norm} ball: perturbation {size.max():.6g} > eps {eps:.6g}")


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over confidence bins of |accuracy - confidence|,
    weighted by the fraction of points in the bin."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    confidence, predicted = probs.max(axis=-1), probs.argmax(axis=-1)
    correct = predicted == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


# The registry lives in sglr_keras.attacks; these names are kept for callers.
ATTACKS = tuple(name for name in ATTACK_NAMES if name != "autoattack")


@dataclass(frozen=True)
class EvaluationSpec:
    """What to measure: attacks by registry name and their budget. ``steps`` and
    ``step_size`` None take each attack's default (PGD-20, CW-30, APGD/FAB 100,
    Square 5000 queries; step eps/4); ``diagnose`` adds the gradient-masking checks."""

    attacks: tuple[str, ...]
    eps: float
    norm: str = "Linf"
    steps: int | None = None
    step_size: float | None = None
    batch_size: int = 256
    autoattack_version: str = "standard"
    seed: int = 0
    diagnose: bool = False

    def __post_init__(self):
        unknown = [a for a in self.attacks if a not in ATTACK_NAMES]
        if unknown:
            raise ValueError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACK_NAMES)}")
        if self.batch_size < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError("batch_size and steps must be at least 1")

    def build(self) -> list:
        """The attack objects this spec names, in order."""
        return [build_attack(name, self.eps, self.norm, self.steps, self.step_size, self.seed,
                             self.autoattack_version) for name in self.attacks]


def attack_settings(attack) -> dict:
    """The budget an attack object ran with: norm, eps and whichever of steps,
    step size, restarts, queries it has."""
    settings = {"norm": getattr(attack, "norm", "Linf"), "eps": float(attack.eps)}
    for key, label in (("steps", "steps"), ("n_iter", "steps"), ("n_queries", "queries"),
                       ("step_size", "step_size"), ("restarts", "restarts"), ("n_restarts", "restarts")):
        value = getattr(attack, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            settings[label] = value
    return settings


def evaluate(model, x, y, attacks=("pgd",), eps: float = 8 / 255, norm: str = "Linf", steps: int | None = None,
             step_size: float | None = None, batch_size: int = 256, version: str = "standard", seed: int = 0,
             diagnose: bool = False, on_attack_start: Callable[[str, int], None] | None = None,
             on_batch: Callable[[int], None] | None = None):
    """Clean and robust accuracy of any Keras classifier (images in [0, 1] to
    logits) as an :class:`~sglr_keras.EvaluationReport`.

    ``attacks`` are registry names (``"pgd"``, ``"cw"``, ``"autoattack"``, ...; built
    with ``eps``, ``norm``, ``steps``, ``step_size`` and the field's default budgets)
    or attack objects (``PGD(eps=...)``, used as they are). Each attacks the
    correctly classified points; ``autoattack`` runs its stages in sequence.

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(8, 4, 4, 1).astype("float32"), np.arange(8) % 3
    >>> report = evaluate(model, x, y, attacks=["pgd"], eps=0.05)
    >>> report.robust_accuracy("pgd") <= report.clean_accuracy
    True
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"evaluate: x must be images (N, H, W, C) with one label each; got x {x.shape}, "
                         f"{len(y)} labels")
    if isinstance(attacks, str):
        attacks = [attacks]
    names = tuple(a for a in attacks if isinstance(a, str))
    spec = EvaluationSpec(names, eps, norm, steps, step_size, batch_size, version, seed, diagnose)
    built = iter(spec.build())
    return run_evaluation(model, x, y, spec, on_attack_start, on_batch,
                          attacks=[next(built) if isinstance(a, str) else a for a in attacks])


def run_evaluation(model, x: np.ndarray, y: np.ndarray, spec: EvaluationSpec,
                   on_attack_start: Callable[[str, int], None] | None = None,
                   on_batch: Callable[[int], None] | None = None, attacks: list | None = None):
    """Clean accuracy and robust accuracy under each attack (``attacks``: attack
    objects; default the ones ``spec`` names), each on every correctly classified
    point; an AutoAttack suite runs its stages in sequence and reports every
    stage. With several attacks, also the worst case per point. Returns an
    :class:`~sglr_keras.EvaluationReport` (accuracies are fractions)."""
    from sglr_keras.attacks.autoattack import AutoAttack
    from sglr_keras.evaluation_report import AttackOutcome, AutoAttackStage, EvaluationReport

    attacks = spec.build() if attacks is None else attacks
    runner = ModelRunner(model, spec.batch_size)
    logits = runner.logits(x)
    correct = np.argmax(logits, axis=-1) == y
    outcomes, worst, suite_facts = [], correct.copy(), {}
    for attack in attacks:
        if isinstance(attack, AutoAttack):
            stages = attack.run(runner, x, y, correct, on_attack_start, on_batch)
            mask, seconds = stages[-1].robust_mask, sum(stage.seconds for stage in stages)
            suite_facts = dict(autoattack_label=attack.label, autoattack_version=attack.version,
                               autoattack_notes=tuple(attack.notes),
                               autoattack_stages=tuple(AutoAttackStage(s.name, s.robust_accuracy, round(s.seconds, 3))
                                                       for s in stages))
        else:
            if on_attack_start:
                on_attack_start(attack.name, int(correct.sum()))
            result = runner.attack(attack, x, y, correct, on_batch)
            mask, seconds = result.robust_mask, result.seconds
        taken = {outcome.name for outcome in outcomes}
        name = attack.name if attack.name not in taken else f"{attack.name}#{len(outcomes)}"
        outcomes.append(AttackOutcome(name, float(mask.mean()) if len(mask) else 0.0, int(mask.sum()),
                                      round(seconds, 3), MappingProxyType(attack_settings(attack))))
        worst &= mask
    report = EvaluationReport(int(len(y)), norm=spec.norm, eps=spec.eps, clean_accuracy=float(correct.mean()),
                              ece=expected_calibration_error(logits, y), attacks=tuple(outcomes),
                              worst_case_robust_accuracy=float(worst.mean()) if len(outcomes) > 1 else None,
                              **suite_facts)
    if spec.diagnose:
        from sglr_keras.diagnostics import gradient_masking_checks

        checks = gradient_masking_checks(report, runner, x, y, correct, spec.norm)
        report = replace(report, diagnostics=tuple(MappingProxyType(check) for check in checks))
    return report
