"""The one rule for an attack's budget (eps, norm, step size, counts), used by
the config check, the command line and every attack constructor alike, so that
a value the config accepts is one every attack accepts. No TensorFlow here:
config checks stay fast."""

from __future__ import annotations

import math

NORMS = ("Linf", "L2")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def budget_problem(eps=None, norm: str = "Linf", step_size=None, **counts) -> str | None:
    """What is wrong with these settings (one phrase), or None. eps: finite, > 0,
    at most 1 under L-inf (pixels live in [0, 1]); step_size: finite, > 0;
    counts (steps, restarts, queries...): whole numbers >= 1."""
    if norm not in NORMS:
        return f"norm must be Linf or L2, got {norm!r}"
    if eps is not None and (not _number(eps) or eps <= 0 or (norm == "Linf" and eps > 1)):
        return f"eps must be a finite number in (0, {'1]' if norm == 'Linf' else 'inf)'}, got {eps!r}"
    if step_size is not None and (not _number(step_size) or step_size <= 0):
        return f"step_size must be a finite number > 0, got {step_size!r}"
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{key} must be a whole number >= 1, got {value!r}"
    return None


def check_budget(owner: str, eps=None, norm: str = "Linf", step_size=None, **counts) -> None:
    """Raise ValueError naming ``owner`` (an attack) when :func:`budget_problem` finds one."""
    problem = budget_problem(eps, norm, step_size, **counts)
    if problem:
        raise ValueError(f"{owner}: {problem}")
