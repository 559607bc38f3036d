"""The one rule for an attack's budget (eps, norm, step size, counts), used by
the config check, the command line and every attack constructor alike, so that
a value the config accepts is one every attack accepts. No TensorFlow here:
config checks stay fast."""

from __future__ import annotations

import math

NORMS = ("Linf", "L2")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def budget_problem(eps=None, norm: str = "Linf", step_size=None, **counts) -> tuple[str, str] | None:
    """``(setting, what is wrong with it)`` for the first bad setting, or None.
    eps: finite, > 0, at most 1 under L-inf (pixels live in [0, 1]);
    step_size: finite, > 0; counts (steps, restarts, queries...): whole numbers >= 1."""
    if norm not in NORMS:
        return "norm", f"{norm!r} is not Linf or L2"
    if eps is not None:
        if not _number(eps):
            return "eps", f"{eps!r} is not a finite number"
        if eps <= 0 or (norm == "Linf" and eps > 1):
            return "eps", f"{eps} is out of range; allowed (0, {'1]' if norm == 'Linf' else 'inf)'}"
    if step_size is not None:
        if not _number(step_size):
            return "step_size", f"{step_size!r} is not a finite number"
        if step_size <= 0:
            return "step_size", f"{step_size} is out of range; allowed (0, inf)"
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return key, f"{value!r} must be a whole number >= 1"
    return None


def check_budget(owner: str, eps=None, norm: str = "Linf", step_size=None, **counts) -> None:
    """Raise ValueError naming ``owner`` (an attack) and the setting when
    :func:`budget_problem` finds one."""
    problem = budget_problem(eps, norm, step_size, **counts)
    if problem:
        setting, what = problem
        raise ValueError(f"{owner}: {setting} {what}")
