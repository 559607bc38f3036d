"""An experiment file: a base config, the runs made from it, and how their
checkpoints are attacked at the end; loaded and validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglr_keras.attacks import ATTACK_NAMES
from sglr_keras.config import (TrainConfig, _check_choice, _check_int, build_section, config_from_raw, did_you_mean,
                               merge_raw, read_yaml)
from sglr_keras.errors import UserError
from sglr_keras.paths import check_path_component

CHECKPOINTS = ("best", "last")
EXPERIMENT_KEYS = {"name", "description", "base", "runs", "final_evaluation"}


@dataclass(frozen=True)
class FinalEvaluation:
    """How the best and last checkpoints of each run are attacked."""

    n_examples: int = 1000
    attacks: tuple[str, ...] = ("pgd", "cw", "autoattack")
    # AutoAttack's Square alone spends 5000 forward passes per robust point; on a
    # CPU it may run on the first ``autoattack_examples`` points only (None: all),
    # with PGD-20 repeated there so the PGD-AutoAttack spread compares like with like.
    autoattack_examples: int | None = None
    # Which checkpoints and runs AutoAttack runs on (the others get the cheaper
    # attacks only); runs None: every run.
    autoattack_checkpoints: tuple[str, ...] = CHECKPOINTS
    autoattack_runs: tuple[str, ...] | None = None
    checkpoints: tuple[str, ...] = CHECKPOINTS
    batch_size: int = 256
    seed: int = 0

    def validate(self) -> None:
        _check_int("final_evaluation.n_examples", self.n_examples, 1)
        _check_int("final_evaluation.batch_size", self.batch_size, 1)
        _check_int("final_evaluation.seed", self.seed, 0)
        if self.autoattack_examples is not None:
            _check_int("final_evaluation.autoattack_examples", self.autoattack_examples, 1)
        for name in self.attacks:
            if name not in (*ATTACK_NAMES, "all"):
                raise UserError(f"final_evaluation.attacks: unknown attack {name!r}"
                                f"{did_you_mean(name, ATTACK_NAMES)}; choose from {', '.join(ATTACK_NAMES)}, all")
        for name in (*self.checkpoints, *self.autoattack_checkpoints):
            _check_choice("final_evaluation.checkpoints", name, CHECKPOINTS)


@dataclass
class Experiment:
    name: str
    description: str
    base: dict[str, Any]
    runs: dict[str, dict[str, Any]]
    final: FinalEvaluation
    source: Path

    def run_config(self, run: str) -> TrainConfig:
        try:
            return config_from_raw(merge_raw(self.base, self.runs[run]))
        except UserError as err:
            raise UserError(f"experiment '{self.source}', run '{run}': {err}")


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; every run's config is checked here."""
    path = Path(path)
    raw = read_yaml(path)
    unknown = sorted(set(raw) - EXPERIMENT_KEYS)
    if unknown:
        raise UserError(f"experiment '{path}': unknown key '{unknown[0]}'; allowed: {', '.join(sorted(EXPERIMENT_KEYS))}")
    base = raw.get("base") or {}
    if isinstance(base, str):
        base = read_yaml(path.parent / base)
    runs = raw.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise UserError(f"experiment '{path}' needs a 'runs' mapping of run name to config overrides")
    for name, overrides in runs.items():
        check_path_component(f"experiment '{path}': run name", name)
        if overrides is not None and not isinstance(overrides, dict):
            raise UserError(f"experiment '{path}': run '{name}' must be a mapping of config overrides "
                            f"(e.g. {{method: sglr}}), got {type(overrides).__name__}")
    final_raw = raw.get("final_evaluation") or {}
    allowed = list(FinalEvaluation.__dataclass_fields__)
    unknown = sorted(set(final_raw) - set(allowed)) if isinstance(final_raw, dict) else []
    if unknown:
        raise UserError(f"experiment '{path}': unknown key '{unknown[0]}'{did_you_mean(unknown[0], allowed)}; "
                        f"final_evaluation takes only {', '.join(allowed)}")
    try:
        final = build_section(FinalEvaluation, final_raw, "final_evaluation.")
        final.validate()
    except UserError as err:
        raise UserError(f"experiment '{path}': {err}")
    experiment = Experiment(str(raw.get("name") or path.stem), str(raw.get("description") or ""), base,
                            {str(k): v or {} for k, v in runs.items()}, final, path)
    for run in experiment.runs:
        experiment.run_config(run)
    for run in final.autoattack_runs or ():
        if run not in experiment.runs:
            raise UserError(f"experiment '{path}': final_evaluation.autoattack_runs names {run!r}, which is not a run"
                            f"{did_you_mean(run, list(experiment.runs))}; its runs are {', '.join(experiment.runs)}")
    return experiment


def select_runs(experiment: Experiment, only: list[str] | None) -> list[str]:
    for name in only or []:
        if name not in experiment.runs:
            raise UserError(f"--only {name!r} is not a run of '{experiment.source}'; "
                            f"its runs are {', '.join(experiment.runs)}")
    return [name for name in experiment.runs if not only or name in only]


