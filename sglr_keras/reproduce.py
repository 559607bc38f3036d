"""Experiments that compare training methods under one budget (``sglr reproduce``).

An experiment file (``configs/repro/*.yaml``) names a base training config and
the runs to make from it::

    name: fashion_mnist
    base: {epochs: 60, data: {dataset: fashion_mnist, train_subset: 1000}, ...}
    # or base: ../cifar10_resnet18.yaml (relative to this file)
    runs:
      pgd-at: {method: pgd-at}
      sglr-paper: {method: sglr, sglr: {preset: paper}}
    final_evaluation: {n_examples: 1000, attacks: [pgd, cw, autoattack]}

Every run trains into ``RUNS_DIR/NAME`` (an interrupted experiment resumes where
it stopped: finished runs are skipped, a partial one resumes), then its best and
last checkpoints are attacked on test points disjoint from the ones that picked
the best checkpoint. The results go to ``results.json``, ``results.md`` and the
report plots.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from sglr_keras.attacks import ALL, ATTACK_NAMES
from sglr_keras.config import (SGLR_METHODS, TrainConfig, _check_choice, _check_int, build_section, config_from_raw,
                               did_you_mean, merge_raw, read_yaml)
from sglr_keras.errors import UserError
from sglr_keras.io import atomic_write_text

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
    # Which checkpoints AutoAttack runs on (the others get the cheaper attacks only).
    autoattack_checkpoints: tuple[str, ...] = CHECKPOINTS
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
    return experiment


def select_runs(experiment: Experiment, only: list[str] | None) -> list[str]:
    for name in only or []:
        if name not in experiment.runs:
            raise UserError(f"--only {name!r} is not a run of '{experiment.source}'; "
                            f"its runs are {', '.join(experiment.runs)}")
    return [name for name in experiment.runs if not only or name in only]


def final_evaluation_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".final.json")


def evaluate_checkpoint(checkpoint: Path, config: TrainConfig, final: FinalEvaluation, load_bundle: Callable,
                        on_attack_start: Callable | None = None, on_batch: Callable | None = None) -> dict:
    """Attack one checkpoint as ``final`` says, on test points disjoint from the
    ``evaluation.n_test`` points that picked the best epoch; cached beside the
    checkpoint and reused while the settings and the checkpoint are unchanged.
    ``load_bundle()`` gives the run's data set; it is called only on a cache miss."""
    import keras

    from sglr_keras.checkpoints import load_classifier
    from sglr_keras.evaluation import evaluate

    from sglr_keras.training.run import read_selection_points

    selection = read_selection_points(checkpoint.parent)
    settings = {**json.loads(json.dumps(asdict(final))), "eps": config.attack.eps,
                "selection_points": _digest(selection["test_indices"]) if selection else None,
                "checkpoint_sha256": file_digest(checkpoint)}
    cache = final_evaluation_path(checkpoint)
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("settings") == settings:
                return cached
        except json.JSONDecodeError:
            pass
    bundle = load_bundle()
    if selection is None:
        raise UserError(f"'{checkpoint.parent}' has no selection_points.json, so the points that picked the best "
                        "epoch are unknown; rerun the same sglr train command in that folder to write it")
    indices = bundle.test_indices(final.n_examples, final.seed, exclude=selection["test_indices"])
    x, y = bundle.test_points(indices)
    if len(y) == 0:
        raise UserError(f"the test set has no points left after the {config.evaluation.n_test} used to pick "
                        "the best checkpoint; lower evaluation.n_test")
    keras.utils.set_random_seed(final.seed)
    model = load_classifier(checkpoint)
    attacks = list(ALL) if "all" in final.attacks else list(dict.fromkeys(final.attacks))
    if checkpoint.stem not in final.autoattack_checkpoints:
        attacks = [a for a in attacks if a != "autoattack"]
    subset = final.autoattack_examples
    if "autoattack" not in attacks or subset is None or subset >= len(y):
        results = evaluate(model, x, y, attacks, config.attack.eps, batch_size=final.batch_size,
                           seed=final.seed, diagnose="autoattack" in attacks,
                           on_attack_start=on_attack_start, on_batch=on_batch)
    else:
        results = evaluate(model, x, y, [a for a in attacks if a != "autoattack"], config.attack.eps,
                           batch_size=final.batch_size, seed=final.seed,
                           on_attack_start=on_attack_start, on_batch=on_batch)
        on_subset = evaluate(model, x[:subset], y[:subset], ["pgd", "autoattack"], config.attack.eps,
                             batch_size=final.batch_size, seed=final.seed, diagnose=True,
                             on_attack_start=on_attack_start, on_batch=on_batch)
        results["robust_accuracy"]["autoattack"] = on_subset["robust_accuracy"]["autoattack"]
        results["attacks"]["autoattack"] = on_subset["attacks"]["autoattack"]
        results["autoattack"] = on_subset["autoattack"]
        results["diagnostics"] = on_subset["diagnostics"]
        results["autoattack_subset"] = {"n_examples": on_subset["n_examples"],
                                        "clean_accuracy": on_subset["clean_accuracy"],
                                        "pgd": on_subset["robust_accuracy"]["pgd"]}
    results["settings"] = settings
    results["test_indices_digest"] = _digest(indices.tolist())
    atomic_write_text(cache, json.dumps(results, indent=2))
    return results


def file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(values: list[int]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def run_result(name: str, run_dir: Path, config: TrainConfig, evaluations: dict[str, dict]) -> dict:
    """One row of the results: training curve facts and the final attacks."""
    from sglr_keras.training.callbacks import read_history
    from sglr_keras.training.run import summarize

    history = read_history(run_dir)
    summary = summarize(history)
    last = history[-1] if history else {}
    result = {
        "run": name,
        "method": config.method,
        "sglr": asdict(config.sglr) if config.method in SGLR_METHODS else None,
        "label_noise": config.data.label_noise,
        "epochs": summary.get("epochs"),
        "planned_epochs": config.epochs,
        "best_epoch": summary.get("best_epoch"),
        "curve": {
            "best_test_robust": summary.get("best_test_robust_acc"),
            "last_test_robust": summary.get("last_test_robust_acc"),
            "best_minus_last": summary.get("best_minus_last_robust_acc"),
            "last_train_robust": last.get("train_robust_acc"),
            "last_train_minus_test_robust": last.get("robust_gap"),
            "last_test_ece": last.get("test_ece"),
            "last_grad_norm": last.get("grad_norm"),
            "max_grad_norm": max((r["grad_norm"] for r in history if "grad_norm" in r), default=None),
        },
        "train_wall_seconds": sum(r.get("seconds", 0.0) for r in history),
        "checkpoints": {},
    }
    for checkpoint, results in evaluations.items():
        attacks = results.get("attacks", {})
        result["checkpoints"][checkpoint] = {
            "clean": results["clean_accuracy"],
            "ece": results.get("ece"),
            **{attack: detail["robust_accuracy"] for attack, detail in attacks.items()},
            "worst_case": results.get("worst_case_robust_accuracy"),
            "autoattack_stages": results.get("autoattack", {}).get("stages"),
            "eval_seconds": sum(detail["seconds"] for detail in attacks.values()),
            "n_examples": results["n_examples"],
            "autoattack_subset": results.get("autoattack_subset"),
            "flags": [check["message"] for check in results.get("diagnostics", []) if check["flagged"]],
        }
    best, last = result["checkpoints"].get("best"), result["checkpoints"].get("last")
    if best and last:
        result["best_minus_last"] = {key: best[key] - last[key] for key in best
                                     if isinstance(best[key], float) and isinstance(last.get(key), float)
                                     and key not in ("eval_seconds", "ece")}
    result["wall_seconds"] = result["train_wall_seconds"] + sum(
        c["eval_seconds"] for c in result["checkpoints"].values())
    return result


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def markdown(experiment: Experiment, results: list[dict], command: str) -> str:
    """Tables of the final attacks and the training curves, with the plots."""
    attacks = [a for a in ("clean", "pgd", "pgd-reference", "cw", "autoattack") if any(
        a in r["checkpoints"].get(c, {}) for r in results for c in CHECKPOINTS)]
    names = {"clean": "clean", "pgd": "PGD-20", "pgd-reference": "PGD-20 (authors')", "cw": "CW", "autoattack": "AA"}
    lines = [f"# {experiment.name}", ""]
    if experiment.description:
        lines += [experiment.description.strip(), ""]
    lines += [f"Produced by `{command}`.", "",
              f"Final attacks on {experiment.final.n_examples} test points disjoint from the ones that picked "
              "the best epoch; accuracies in %. Gap = best - last.", ""]
    subset = experiment.final.autoattack_examples
    if subset is not None and "autoattack" in attacks and subset < experiment.final.n_examples:
        lines += [f"AutoAttack (AA) ran on the first {subset} of those points only (CPU budget), so its "
                  f"sampling error is larger; the PGD-20 accuracy on the same {subset} points is in the "
                  "last table, for the PGD-AA spread.", ""]
    header = ["run"] + [f"{names[a]} {c}" for c in CHECKPOINTS for a in attacks] + \
             [f"gap {names[a]}" for a in attacks if a != "clean"] + \
             ["best epoch", "train-test robust (last)", "ECE last", "wall min"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r["run"]]
        for c in CHECKPOINTS:
            cells += [_pct(r["checkpoints"].get(c, {}).get(a)) for a in attacks]
        gaps = r.get("best_minus_last", {})
        cells += [_pct(gaps.get(a)) for a in attacks if a != "clean"]
        last_ece = r["checkpoints"].get("last", {}).get("ece", r["curve"]["last_test_ece"])
        cells += [str(r["best_epoch"]), _pct(r["curve"]["last_train_minus_test_robust"]), _pct(last_ece),
                  f"{r['wall_seconds'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Training curves (PGD-10 every epoch on the model-selection test points):", "",
              "| run | epochs | best epoch | best test robust | last test robust | best - last | last train robust | "
              "max grad norm | last grad norm |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["curve"]
        norms = [f"{v:.3g}" if v is not None else "" for v in (c["max_grad_norm"], c["last_grad_norm"])]
        lines.append(f"| {r['run']} | {r['epochs']} | {r['best_epoch']} | {_pct(c['best_test_robust'])} | "
                     f"{_pct(c['last_test_robust'])} | {_pct(c['best_minus_last'])} | {_pct(c['last_train_robust'])} | "
                     f"{norms[0]} | {norms[1]} |")
    spreads = [(r["run"], c, v["autoattack_subset"], v["autoattack"]) for r in results
               for c, v in r["checkpoints"].items() if v.get("autoattack_subset") and "autoattack" in v]
    if spreads:
        lines += ["", "PGD-20 and AutoAttack on the same points:", "",
                  "| run | checkpoint | points | clean | PGD-20 | AA | PGD - AA |", "|---|---|---|---|---|---|---|"]
        for run, checkpoint, sub, aa in spreads:
            lines.append(f"| {run} | {checkpoint} | {sub['n_examples']} | {_pct(sub['clean_accuracy'])} | "
                         f"{_pct(sub['pgd'])} | {_pct(aa)} | {_pct(sub['pgd'] - aa)} |")
    flags = [(r["run"], c, msg) for r in results for c, v in r["checkpoints"].items() for msg in v["flags"]]
    if flags:
        lines += ["", "Gradient-masking checks that fired:", ""]
        lines += [f"- {run} ({checkpoint}): {message}" for run, checkpoint, message in flags]
    lines += seed_statistics(results)
    lines += ["", "![robust accuracy](plots/robust_accuracy.png)", "![clean accuracy](plots/clean_accuracy.png)",
              "![gradient norm](plots/gradient_norm.png)", "![gap](plots/generalisation_gap.png)", ""]
    return "\n".join(lines)


SEED_SUFFIX = re.compile(r"-seed\d+$")
# (label, how to read the number from a run result); values are fractions.
SEED_COLUMNS = (
    ("curve best", lambda r: r["curve"]["best_test_robust"]),
    ("curve last", lambda r: r["curve"]["last_test_robust"]),
    ("curve best - last", lambda r: r["curve"]["best_minus_last"]),
    ("PGD-20 best", lambda r: r["checkpoints"].get("best", {}).get("pgd")),
    ("PGD-20 last", lambda r: r["checkpoints"].get("last", {}).get("pgd")),
    ("PGD-20 best - last", lambda r: r.get("best_minus_last", {}).get("pgd")),
    ("CW best - last", lambda r: r.get("best_minus_last", {}).get("cw")),
    ("clean last", lambda r: r["checkpoints"].get("last", {}).get("clean")),
    ("AA last", lambda r: r["checkpoints"].get("last", {}).get("autoattack")),
    ("ECE last", lambda r: r["checkpoints"].get("last", {}).get("ece")),
    ("train - test robust (last)", lambda r: r["curve"]["last_train_minus_test_robust"]),
)


def seed_groups(results: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by name without their ``-seedN`` suffix."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(SEED_SUFFIX.sub("", result["run"]), []).append(result)
    return groups


def mean_and_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    import statistics

    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def seed_statistics(results: list[dict]) -> list[str]:
    """A table of mean +- standard deviation over the seeds of each method (in %)."""
    groups = seed_groups(results)
    if all(len(runs) == 1 for runs in groups.values()):
        return []
    lines = ["", "Over seeds (runs named NAME, NAME-seed1, ...): mean +- sample standard deviation, in %; "
             "n = number of seeds with the value.", "",
             "| method | n | " + " | ".join(label for label, _ in SEED_COLUMNS) + " |",
             "|---|---|" + "---|" * len(SEED_COLUMNS)]
    for name, runs in groups.items():
        cells = []
        for _, read in SEED_COLUMNS:
            values = [v for v in (read(r) for r in runs) if isinstance(v, (int, float))]
            if not values:
                cells.append("")
                continue
            mean, spread = mean_and_spread([100 * v for v in values])
            cells.append(f"{mean:.1f}" + (f" +- {spread:.1f}" if spread is not None else "")
                         + (f" (n={len(values)})" if len(values) != len(runs) else ""))
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def reproduce(experiment: Experiment, runs_dir: Path, report_dir: Path, only: list[str] | None = None,
              evaluate: bool = True, console=None, command: str = "sglr reproduce") -> dict:
    """Train and evaluate the selected runs, then write the report for every run
    of the experiment that has finished training."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sglr_keras.data import load_dataset
    from sglr_keras.training.run import train

    console = console or Console(stderr=True)
    selected = select_runs(experiment, only)
    for name in selected:
        config = experiment.run_config(name)
        console.rule(f"{experiment.name}: {name} ({config.method})")
        train(config, runs_dir / name, console=console)
        if not evaluate:
            continue
        # Both checkpoints share the data, read once and only if an attack has to run.
        load_bundle = functools.cache(lambda data=config.data: load_dataset(data.dataset, data.data_dir))
        for checkpoint in experiment.final.checkpoints:
            path = runs_dir / name / f"{checkpoint}.keras"
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=console, transient=True) as progress:
                task = progress.add_task(f"{name} {checkpoint}", total=1)

                def on_attack_start(attack, n_points, task=task, label=f"{name} {checkpoint}"):
                    progress.reset(task, total=n_points, description=f"{label}: {attack}")

                results = evaluate_checkpoint(path, config, experiment.final, load_bundle, on_attack_start,
                                              lambda n, task=task: progress.advance(task, n))
            summary = ", ".join(f"{a} {100 * v:.1f}" for a, v in results["robust_accuracy"].items())
            console.print(f"{name} {checkpoint}: clean {100 * results['clean_accuracy']:.1f}, {summary}",
                          highlight=False)

    return write_report(experiment, runs_dir, report_dir, command)


def write_report(experiment: Experiment, runs_dir: Path, report_dir: Path, command: str) -> dict:
    """``results.json``, ``results.md`` and plots for every run of the experiment
    that has finished training in ``runs_dir`` (with whatever final attacks it has)."""
    from sglr_keras.report import load_runs, plot_runs

    results, finished = [], []
    for name in experiment.runs:
        run_dir = runs_dir / name
        config = experiment.run_config(name)
        state = run_dir / "summary.json"
        if not state.is_file():
            continue
        evaluations = {}
        for checkpoint in experiment.final.checkpoints:
            cache = final_evaluation_path(run_dir / f"{checkpoint}.keras")
            if cache.is_file():
                evaluations[checkpoint] = json.loads(cache.read_text())
        results.append(run_result(name, run_dir, config, evaluations))
        finished.append(run_dir)
    if not finished:
        return {"experiment": experiment.name, "runs": []}
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_runs(load_runs(finished), report_dir / "plots")
    document = {"experiment": experiment.name, "source": str(experiment.source), "command": command,
                "final_evaluation": asdict(experiment.final), "runs": results}
    atomic_write_text(report_dir / "results.json", json.dumps(document, indent=2))
    atomic_write_text(report_dir / "results.md", markdown(experiment, results, command))
    return document
