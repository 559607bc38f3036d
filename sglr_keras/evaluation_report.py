"""The typed result of :func:`sglr_keras.evaluate`.

An :class:`EvaluationReport` is frozen: per attack its robust accuracy, how
many points survived, its settings (norm, eps, steps, step size) and its time;
the AutoAttack stages; the gradient-masking diagnostics. ``to_dict`` gives the
JSON shape ``sglr eval --json`` writes; ``table`` renders markdown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class AttackOutcome:
    """One attack's result on the report's points."""

    name: str
    robust_accuracy: float
    n_robust: int
    seconds: float
    settings: Mapping[str, Any] = field(default_factory=dict)
    # Set when the attack ran on fewer points than the report's (e.g. AutoAttack
    # on the first 100 of 500): its accuracy is over these points.
    n_examples: int | None = None


@dataclass(frozen=True)
class AutoAttackStage:
    attack: str
    robust_accuracy_after: float
    seconds: float


@dataclass(frozen=True)
class EvaluationReport:
    """Clean and robust accuracy of one model on ``n_examples`` points (fractions).

    >>> report = EvaluationReport(n_examples=2, norm="Linf", eps=0.1, clean_accuracy=1.0, ece=0.0,
    ...     attacks=(AttackOutcome("pgd", 0.5, 1, 0.1, {"steps": 20}),))
    >>> report.robust_accuracy("pgd")
    0.5
    >>> print(report.table().splitlines()[2])
    | clean | 100.0 | 2 | |
    """

    n_examples: int
    norm: str
    eps: float
    clean_accuracy: float
    ece: float
    attacks: tuple[AttackOutcome, ...] = ()
    worst_case_robust_accuracy: float | None = None
    autoattack_label: str | None = None
    autoattack_stages: tuple[AutoAttackStage, ...] = ()
    autoattack_version: str | None = None
    autoattack_notes: tuple[str, ...] = ()
    diagnostics: tuple[Mapping[str, Any], ...] = ()

    def robust_accuracy(self, attack: str) -> float:
        """The robust accuracy under ``attack`` (a KeyError names the ones measured)."""
        for outcome in self.attacks:
            if outcome.name == attack:
                return outcome.robust_accuracy
        raise KeyError(f"no attack {attack!r} in this report; it has {', '.join(a.name for a in self.attacks)}")

    @property
    def flagged(self) -> tuple[str, ...]:
        """The names of the diagnostics that point to gradient masking."""
        return tuple(check["check"] for check in self.diagnostics if check.get("flagged"))

    def to_dict(self) -> dict:
        result = {"n_examples": self.n_examples, "eps": self.eps, "norm": self.norm,
                  "clean_accuracy": self.clean_accuracy, "ece": self.ece,
                  "robust_accuracy": {a.name: a.robust_accuracy for a in self.attacks},
                  "attacks": {a.name: {"robust_accuracy": a.robust_accuracy, "seconds": a.seconds,
                                       "n_robust": a.n_robust, **dict(a.settings),
                                       **({"n_examples": a.n_examples} if a.n_examples is not None else {})}
                              for a in self.attacks}}
        if self.worst_case_robust_accuracy is not None:
            result["worst_case_robust_accuracy"] = self.worst_case_robust_accuracy
        if self.autoattack_stages:
            result["autoattack"] = {"version": self.autoattack_version, "label": self.autoattack_label,
                                    "notes": list(self.autoattack_notes),
                                    "stages": [vars(stage) for stage in self.autoattack_stages]}
        if self.diagnostics:
            result["diagnostics"] = [dict(check) for check in self.diagnostics]
        return result

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """Markdown: one row per measurement, accuracies in %."""
        rows = ["| measurement | accuracy (%) | points | settings |", "| --- | --- | --- | --- |",
                f"| clean | {100 * self.clean_accuracy:.1f} | {self.n_examples} | |"]
        for outcome in self.attacks:
            settings = ", ".join(f"{k} {v}" for k, v in outcome.settings.items())
            points = outcome.n_examples if outcome.n_examples is not None else self.n_examples
            rows.append(f"| {outcome.name} | {100 * outcome.robust_accuracy:.1f} | {points} | {settings} |")
        if self.worst_case_robust_accuracy is not None and len(self.attacks) > 1:
            rows.append(f"| worst case | {100 * self.worst_case_robust_accuracy:.1f} | {self.n_examples} | |")
        return "\n".join(rows)

    @classmethod
    def from_dict(cls, results: dict) -> "EvaluationReport":
        """The report :meth:`to_dict` wrote (a JSON record read back)."""
        known = ("robust_accuracy", "seconds", "n_robust", "n_examples")
        attacks = tuple(
            AttackOutcome(name, float(entry["robust_accuracy"]), int(entry.get("n_robust", 0)),
                          float(entry.get("seconds", 0.0)),
                          MappingProxyType({k: v for k, v in entry.items() if k not in known}),
                          entry.get("n_examples"))
            for name, entry in results.get("attacks", {}).items())
        autoattack = results.get("autoattack") or {}
        stages = tuple(AutoAttackStage(s["attack"], float(s["robust_accuracy_after"]), float(s["seconds"]))
                       for s in autoattack.get("stages", []))
        return cls(int(results["n_examples"]), str(results["norm"]), float(results["eps"]),
                   float(results["clean_accuracy"]), float(results.get("ece", 0.0)), attacks,
                   results.get("worst_case_robust_accuracy"), autoattack.get("label"), stages,
                   autoattack.get("version"), tuple(autoattack.get("notes", [])),
                   tuple(MappingProxyType(dict(c)) for c in results.get("diagnostics", [])))
