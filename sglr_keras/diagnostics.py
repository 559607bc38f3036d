"""Gradient-masking checks (after Athalye, Carlini & Wagner 2018 and Croce & Hein
2020): signs that a white-box number overstates robustness.

Soft labels can flatten logits and weaken gradient attacks (Label Smoothing and
Adversarial Robustness, arXiv 2009.08233); the SGLR paper's own PGD-vs-AutoAttack
spread (5.7 points vs 1.2 for PGD-AT) is such a sign. Each check returns a dict
with the measured value, whether it is flagged and a sentence saying what it
means.
"""

from __future__ import annotations

import numpy as np

from sglr_keras.attacks.pgd import PGD

# Points of robust accuracy by which PGD may exceed AutoAttack before we flag it;
# PGD-AT models show ~1 point (docs/method.md).
PGD_AA_SPREAD_LIMIT = 0.02
# Fraction of all points that Square may break after the white-box attacks failed.
SQUARE_GAIN_LIMIT = 0.005
LARGE_EPS = (0.25, 0.5, 1.0)
LARGE_EPS_POINTS = 200
# Largest logit difference between two identical forward passes that still counts
# as deterministic (float reductions may reorder).
DETERMINISM_TOLERANCE = 1e-4
DETERMINISM_POINTS = 64


def determinism_check(runner, x) -> dict:
    """Two forward passes on the same points: a randomised model (noise injection,
    random input transforms) defeats the standard AutoAttack, which assumes a
    fixed model; ``--version rand`` (expectation over transformations) is for it."""
    points = x[:DETERMINISM_POINTS]
    difference = float(np.abs(runner.logits(points) - runner.logits(points)).max()) if len(points) else 0.0
    flagged = difference > DETERMINISM_TOLERANCE
    return {
        "check": "deterministic_outputs", "value": difference, "flagged": flagged,
        "message": (f"The model's outputs change between identical calls (up to {difference:.3g}): it is "
                    "randomised, so the standard AutoAttack under-attacks it; evaluate with --version rand."
                    if flagged else "The model's outputs are deterministic."),
    }


def gradient_masking_checks(report, runner, x, y, clean_correct, norm: str = "Linf") -> list[dict]:
    """The checks on an :class:`~sglr_keras.EvaluationReport` and its points."""
    checks = [determinism_check(runner, x)]
    robust = {outcome.name: outcome.robust_accuracy for outcome in report.attacks}
    if "pgd" in robust and "autoattack" in robust:
        spread = robust["pgd"] - robust["autoattack"]
        flagged = spread > PGD_AA_SPREAD_LIMIT
        checks.append({
            "check": "pgd_vs_autoattack_spread", "value": spread, "flagged": flagged,
            "message": (f"PGD overstates robustness by {100 * spread:.1f} points against AutoAttack: "
                        "gradients are likely masked; report AutoAttack, not PGD."
                        if flagged else f"PGD and AutoAttack agree within {100 * spread:.1f} points."),
        })
    stages = report.autoattack_stages
    if len(stages) >= 2 and stages[-1].attack == "square":
        gain = stages[-2].robust_accuracy_after - stages[-1].robust_accuracy_after
        flagged = gain > SQUARE_GAIN_LIMIT
        checks.append({
            "check": "black_box_finds_more", "value": gain, "flagged": flagged,
            "message": (f"The gradient-free Square attack broke {100 * gain:.1f}% of points that every "
                        "gradient attack missed: gradients are unreliable for this model."
                        if flagged else "Square found no points the gradient attacks had missed."),
        })
    if norm == "Linf":
        subset = np.flatnonzero(clean_correct)[:LARGE_EPS_POINTS]
        accuracies = {}
        for eps in LARGE_EPS:
            attack = PGD(eps=eps, step_size=eps / 8, steps=50, random_start=True)
            accuracies[eps] = runner.attack(attack, x[subset], y[subset], np.ones(len(subset), bool)).robust_accuracy
        final = accuracies[LARGE_EPS[-1]]
        flagged = final > 0.01
        checks.append({
            "check": "accuracy_at_large_eps", "value": {str(k): v for k, v in accuracies.items()},
            "flagged": flagged,
            "message": (f"PGD leaves {100 * final:.1f}% accuracy at eps = 1, where any image is reachable: "
                        "the attack is not following useful gradients."
                        if flagged else "Robust accuracy goes to 0 as eps grows, as it must."),
        })
    return checks
