"""The final attacks on a run's best and last checkpoints, on test points
disjoint from the ones that picked the best epoch, cached beside the checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from sglr_keras.attacks import ALL
from sglr_keras.config import TrainConfig
from sglr_keras.errors import UserError
from sglr_keras.evaluation_report import EvaluationReport
from sglr_keras.io import atomic_write_text
from sglr_keras.runs import final_test_indices, points_digest  # noqa: F401 (re-exported for callers)
from sglr_keras.runs.folder import final_record_path
from sglr_keras.reproduce.experiment import FinalEvaluation


def final_evaluation_path(checkpoint: Path) -> Path:
    return final_record_path(checkpoint)


# The settings that decide a cached final evaluation's numbers.
CACHE_KEYS = ("n_examples", "attacks", "autoattack_examples", "batch_size", "seed", "eps", "selection_points",
              "checkpoint_sha256")


def final_attacks(final: FinalEvaluation, run: str, checkpoint: str) -> list[str]:
    """The attacks ``final`` runs on this run's ``checkpoint`` (best or last)."""
    attacks = list(ALL) if "all" in final.attacks else list(dict.fromkeys(final.attacks))
    autoattack_here = checkpoint in final.autoattack_checkpoints and (
        final.autoattack_runs is None or run in final.autoattack_runs)
    return attacks if autoattack_here else [a for a in attacks if a != "autoattack"]


def evaluate_checkpoint(checkpoint: Path, config: TrainConfig, final: FinalEvaluation, load_bundle: Callable,
                        on_attack_start: Callable | None = None, on_batch: Callable | None = None,
                        run: str | None = None) -> FinalRecord:
    """Attack one checkpoint as ``final`` says, on test points disjoint from the
    ``evaluation.n_test`` points that picked the best epoch; cached beside the
    checkpoint and reused while the settings (``CACHE_KEYS``) and the checkpoint's
    content are unchanged. ``load_bundle()`` gives the run's data set; it is
    called only on a cache miss."""
    import keras

    from sglr_keras.checkpoints import checkpoint_digest, load_classifier
    from sglr_keras.evaluation import EvaluationSpec, run_evaluation
    from sglr_keras.runs import read_selection_points

    attacks = final_attacks(final, run or checkpoint.parent.name, checkpoint.stem)
    selection = read_selection_points(checkpoint.parent)
    settings = {**json.loads(json.dumps(asdict(final))), "attacks": attacks, "eps": config.attack.eps,
                "selection_points": points_digest(selection["test_indices"]) if selection else None,
                "checkpoint_sha256": checkpoint_digest(checkpoint)}
    cached = read_final_record(checkpoint)
    if cached is not None:
        # AutoAttack's subset size only matters where AutoAttack runs.
        keys = [k for k in CACHE_KEYS if k != "autoattack_examples" or "autoattack" in attacks]
        if all(cached.settings.get(k) == settings[k] for k in keys):
            return cached
    bundle = load_bundle()
    indices = final_test_indices(bundle, checkpoint.parent, selection, final.n_examples, final.seed)
    x, y = bundle.test_points(indices)
    if len(y) == 0:
        raise UserError(f"the test set has no points left after the {config.evaluation.n_test} used to pick "
                        "the best checkpoint; lower evaluation.n_test")
    keras.utils.set_random_seed(final.seed)
    model = load_classifier(checkpoint)
    subset = final.autoattack_examples

    def spec(names, diagnose=False):
        return EvaluationSpec(tuple(names), config.attack.eps, batch_size=final.batch_size, seed=final.seed,
                              diagnose=diagnose)

    subset_facts = None
    if "autoattack" not in attacks or subset is None or subset >= len(y):
        report = run_evaluation(model, x, y, spec(attacks, "autoattack" in attacks), on_attack_start, on_batch)
    else:
        report = run_evaluation(model, x, y, spec([a for a in attacks if a != "autoattack"]), on_attack_start,
                                on_batch)
        on_subset = run_evaluation(model, x[:subset], y[:subset], spec(["pgd", "autoattack"], True),
                                   on_attack_start, on_batch)
        suite = replace(next(a for a in on_subset.attacks if a.name == "autoattack"), n_examples=on_subset.n_examples)
        report = replace(report, attacks=report.attacks + (suite,), diagnostics=on_subset.diagnostics,
                         autoattack_label=on_subset.autoattack_label, autoattack_stages=on_subset.autoattack_stages,
                         autoattack_version=on_subset.autoattack_version, autoattack_notes=on_subset.autoattack_notes)
        # PGD and clean accuracy on the same subset, to read AutoAttack against.
        subset_facts = {"n_examples": on_subset.n_examples, "clean_accuracy": on_subset.clean_accuracy,
                        "pgd": on_subset.robust_accuracy("pgd")}
    record = FinalRecord(report, settings, points_digest(indices.tolist()), subset_facts)
    atomic_write_text(final_evaluation_path(checkpoint), json.dumps(record.to_dict(), indent=2))
    return record


@dataclass(frozen=True)
class FinalRecord:
    """A checkpoint's final evaluation as cached beside it: the report, the
    settings that decide whether the cache still holds, which test points, and
    (when AutoAttack ran on a subset) clean and PGD accuracy on that subset."""

    report: EvaluationReport
    settings: dict
    test_indices_digest: str | None = None
    autoattack_subset: dict | None = None

    def to_dict(self) -> dict:
        record = {**self.report.to_dict(), "settings": self.settings, "test_indices_digest": self.test_indices_digest}
        if self.autoattack_subset is not None:
            record["autoattack_subset"] = self.autoattack_subset
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "FinalRecord":
        return cls(EvaluationReport.from_dict(record), dict(record.get("settings", {})),
                   record.get("test_indices_digest"), record.get("autoattack_subset"))


def read_final_record(checkpoint: Path) -> FinalRecord | None:
    """The cached final evaluation of ``checkpoint``, or None (missing or unreadable:
    it is recomputed)."""
    path = final_evaluation_path(checkpoint)
    if not path.is_file():
        return None
    try:
        return FinalRecord.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
