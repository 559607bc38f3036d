"""The experiment's report: one row per run, statistics over seeds, plots."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from sglr_keras.config import SGLR_METHODS, TrainConfig
from sglr_keras.io import atomic_write_text
from sglr_keras.reproduce.experiment import CHECKPOINTS, Experiment
from sglr_keras.reproduce.final import read_final_record
from sglr_keras.runs import RunFolder

def run_result(name: str, run_dir: Path, config: TrainConfig, evaluations: dict) -> dict:
    """One row of the results: training curve facts and the final attacks."""
    from sglr_keras.training.callbacks import read_history
    from sglr_keras.runs.summary import summarize

    history = read_history(run_dir)
    summary = summarize(history)
    last = history[-1] if history else {}
    result = {
        "run": name,
        "method": config.method,
        "sglr": asdict(config.sglr) if config.method in SGLR_METHODS else None,
        "label_noise": config.data.label_noise,
        "seed": config.seed,
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
            "last_table_entropy": last.get("table_entropy"),
            "last_grad_norm": last.get("grad_norm"),
            "max_grad_norm": max((r["grad_norm"] for r in history if "grad_norm" in r), default=None),
        },
        "train_wall_seconds": sum(r.get("seconds", 0.0) for r in history),
        "checkpoints": {},
    }
    for checkpoint, record in evaluations.items():
        report = record.report
        result["checkpoints"][checkpoint] = {
            "clean": report.clean_accuracy,
            "ece": report.ece,
            **{outcome.name: outcome.robust_accuracy for outcome in report.attacks},
            "worst_case": report.worst_case_robust_accuracy,
            "autoattack_stages": [vars(stage) for stage in report.autoattack_stages] or None,
            "eval_seconds": sum(outcome.seconds for outcome in report.attacks),
            "n_examples": report.n_examples,
            "autoattack_subset": record.autoattack_subset,
            "flags": [check["message"] for check in report.diagnostics if check["flagged"]],
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
    lines += paired_differences(results)
    lines += noise_rate_table(results)
    lines += ["", "![robust accuracy](plots/robust_accuracy.png)", "![clean accuracy](plots/clean_accuracy.png)",
              "![gradient norm](plots/gradient_norm.png)", "![gap](plots/generalisation_gap.png)", ""]
    return "\n".join(lines)


# A run NAME-seedN or NAME-sN is seed N of NAME (NAME alone: seed 0).
SEED_SUFFIX = re.compile(r"-(?:seed|s)(\d+)$")
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


# (label, how to read the number) for the paired differences against the baseline.
PAIRED_COLUMNS = (
    ("curve best - last", lambda r: r["curve"]["best_minus_last"]),
    ("PGD-20 best", lambda r: r["checkpoints"].get("best", {}).get("pgd")),
    ("PGD-20 last", lambda r: r["checkpoints"].get("last", {}).get("pgd")),
    ("PGD-20 best - last", lambda r: r.get("best_minus_last", {}).get("pgd")),
    ("CW best", lambda r: r["checkpoints"].get("best", {}).get("cw")),
    ("CW last", lambda r: r["checkpoints"].get("last", {}).get("cw")),
    ("AA last", lambda r: r["checkpoints"].get("last", {}).get("autoattack")),
    ("clean last", lambda r: r["checkpoints"].get("last", {}).get("clean")),
    ("ECE last", lambda r: r["checkpoints"].get("last", {}).get("ece")),
    ("train - test robust", lambda r: r["curve"]["last_train_minus_test_robust"]),
)


def _seed_of(run: str) -> str:
    match = SEED_SUFFIX.search(run)
    return match.group(0) if match else ""


def paired_differences(results: list[dict], baseline: str = "pgd-at", columns=PAIRED_COLUMNS) -> list[str]:
    """Each method minus ``baseline`` on the same seed (the seed also draws the
    training subset, so a pair shares its data), over the seeds both have: mean +-
    sd with the per-seed values, in points. A difference is marked as beyond the
    seed spread when every seed has the same sign and the mean exceeds the
    standard deviation of the differences. ``columns``: (label, reader) pairs."""
    groups = seed_groups(results)
    base = {_seed_of(r["run"]): r for r in groups.get(baseline, [])}
    lines = []
    for name, runs in groups.items():
        pairs = [(r, base[_seed_of(r["run"])]) for r in runs if name != baseline and _seed_of(r["run"]) in base]
        if len(pairs) < 2:
            continue
        cells = []
        for _, read in columns:
            values = [100 * (read(a) - read(b)) for a, b in pairs
                      if isinstance(read(a), (int, float)) and isinstance(read(b), (int, float))]
            if len(values) < 2:
                cells.append("")
                continue
            mean, spread = mean_and_spread(values)
            beyond = (all(v > 0 for v in values) or all(v < 0 for v in values)) and abs(mean) > spread
            cells.append(f"{'**' if beyond else ''}{mean:+.1f} +- {spread:.1f}{'**' if beyond else ''} "
                         f"(n={len(values)}; {', '.join(f'{v:+.1f}' for v in values)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["", f"Paired by seed, each method minus {baseline} (same seed, same training images), in points: "
            "mean +- sd over seeds (n; per-seed values). **Bold**: beyond the seed spread (every seed the same "
            "sign and |mean| > sd).", "",
            f"| method - {baseline} | " + " | ".join(label for label, _ in columns) + " |",
            "|---|" + "---|" * len(columns)] + lines


def write_report(experiment: Experiment, runs_dir: Path, report_dir: Path, command: str) -> dict:
    """``results.json``, ``results.md`` and plots for every run of the experiment
    that has finished training in ``runs_dir`` (with whatever final attacks it has)."""
    from sglr_keras.report import load_runs, plot_runs

    results, finished = [], []
    for name in experiment.runs:
        run_dir = runs_dir / name
        config = experiment.run_config(name)
        state = RunFolder(run_dir).summary
        if not state.is_file():
            continue
        evaluations = {}
        for checkpoint in experiment.final.checkpoints:
            record = read_final_record(run_dir / f"{checkpoint}.keras")
            if record is not None:
                evaluations[checkpoint] = record
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


# The seed table's columns the noise-rate table shows (fractions); the first three are paired.
RATE_COLUMNS = tuple(column for column in SEED_COLUMNS
                     if column[0] in ("PGD-20 best", "PGD-20 last", "PGD-20 best - last", "clean last", "ECE last"))


def _method_label(result: dict) -> str:
    sglr = result.get("sglr") or {}
    return result["method"] + (f" (warm-up {sglr['warmup_epochs']})" if "warmup_epochs" in sglr else "")


def noise_rate_table(results: list[dict], baseline: str = "pgd-at") -> list[str]:
    """For an experiment over label-noise rates: per rate and method, mean +- sd
    over seeds of the final attacks, ECE and the soft-label table's mean row
    entropy (nats) at the last epoch; then each method minus ``baseline`` paired
    by seed at each rate. Empty when the runs share one rate."""
    rates = sorted({r["label_noise"] for r in results})
    if len(rates) < 2:
        return []

    def cell(values, scale=100.0, signed=False):
        values = [scale * v for v in values if isinstance(v, (int, float))]
        if not values:
            return ""
        mean, spread = mean_and_spread(values)
        text = f"{mean:+.1f}" if signed else f"{mean:.1f}" if scale == 100.0 else f"{mean:.2f}"
        return text + (f" +- {spread:.1f}" if spread is not None and scale == 100.0 else
                       f" +- {spread:.2f}" if spread is not None else "")

    lines = ["", "By label-noise rate: mean +- sd over seeds, in % (table entropy: the soft-label table's mean "
             "row entropy at the last epoch, in nats; ln 10 = 2.30 is uniform over 10 classes).", "",
             "| noise | method | n | " + " | ".join(label for label, _ in RATE_COLUMNS) + " | table entropy |",
             "|---|---|---|" + "---|" * (len(RATE_COLUMNS) + 1)]
    paired = []
    for rate in rates:
        at_rate = [r for r in results if r["label_noise"] == rate]
        methods = list(dict.fromkeys(_method_label(r) for r in at_rate))
        for method in methods:
            runs = [r for r in at_rate if _method_label(r) == method]
            cells = [cell([read(r) for r in runs]) for _, read in RATE_COLUMNS]
            entropy = cell([r["curve"].get("last_table_entropy") for r in runs], scale=1.0)
            lines.append(f"| {100 * rate:.0f}% | {method} | {len(runs)} | " + " | ".join(cells) + f" | {entropy} |")
        base = {r["seed"]: r for r in at_rate if r["method"] == baseline}
        for method in methods:
            pairs = [(r, base[r["seed"]]) for r in at_rate
                     if _method_label(r) == method and r["method"] != baseline and r["seed"] in base]
            if pairs:
                columns = []
                for _, read in RATE_COLUMNS[:3]:
                    values = [read(a) - read(b) for a, b in pairs
                              if isinstance(read(a), float) and isinstance(read(b), float)]
                    columns.append(f"{cell(values, signed=True)} ({', '.join(f'{100 * v:+.1f}' for v in values)})")
                paired.append(f"| {100 * rate:.0f}% | {method} | {len(pairs)} | " + " | ".join(columns) + " |")
    if paired:
        lines += ["", f"Paired by seed at each rate, method minus {baseline} (same seed: same images and wrong "
                  "labels), in points: mean +- sd (per-seed values).", "",
                  "| noise | method | pairs | " + " | ".join(label for label, _ in RATE_COLUMNS[:3]) + " |",
                  "|---|---|---|" + "---|" * 3] + paired
    return lines
