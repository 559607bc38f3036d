"""Markdown tables of AutoAttack results from `autoattack_torch.py` or
`autoattack_ours.py` next to the runs' own final attacks (PGD-20, CW) on the same
points: per checkpoint (with the implementation that attacked it), then mean and
standard deviation over the seeds of each method.

    python benchmarks/torch_bridge/aa_report.py RUNS_DIR aa_*.json > aa.md

A result is matched to ``RUN/CHECKPOINT.keras.final.json`` by name; the points
must be the same (test-index digest when the result carries the indices, else the
same clean accuracy on the same number of points), or the script stops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sglr_keras.runs import points_digest
from sglr_keras.reproduce.final import read_final_record
from sglr_keras.reproduce.report import PAIRED_COLUMNS, SEED_SUFFIX, mean_and_spread, paired_differences


def rows(runs_dir: Path, results: dict[str, dict]) -> list[dict]:
    def order(key):  # seed 0 (no suffix) first, as the experiment lists its runs
        run = key.split("__")[0]
        match = SEED_SUFFIX.search(run)
        return SEED_SUFFIX.sub("", run), int(match.group(1)) if match else 0, key

    table = []
    for key in sorted(results, key=order):
        run, checkpoint = key.split("__")
        aa = results[key]
        record = read_final_record(runs_dir / run / f"{checkpoint}.keras")
        if record is None:
            raise SystemExit(f"{key}: no final evaluation beside the checkpoint; run sglr reproduce first")
        final = record.report
        if "test_indices" in aa:
            same = points_digest(aa["test_indices"]) == record.test_indices_digest
        else:
            same = aa["n_examples"] == final.n_examples and abs(aa["clean_accuracy"] - final.clean_accuracy) < 1e-4
        if not same:
            raise SystemExit(f"{key}: the AutoAttack points are not the final evaluation's points")
        cw = next((a.robust_accuracy for a in final.attacks if a.name == "cw"), None)
        table.append({"run": run, "checkpoint": checkpoint, "n": aa["n_examples"], "clean": final.clean_accuracy,
                      "pgd": final.robust_accuracy("pgd"), "cw": cw, "aa": aa["robust_accuracy"],
                      "by": aa.get("attacked_by", "")})
    return table


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _mean_sd(values: list[float]) -> str:
    mean, spread = mean_and_spread([100 * v for v in values])
    return f"{mean:.1f}" if spread is None else f"{mean:.1f} +- {spread:.1f}"


def markdown(table: list[dict]) -> str:
    lines = ["| run | checkpoint | points | clean | PGD-20 | CW | AutoAttack | PGD-20 - AA | AutoAttack by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['run']} | {row['checkpoint']} | {row['n']} | {_pct(row['clean'])} | {_pct(row['pgd'])} | "
                     f"{_pct(row['cw'])} | {_pct(row['aa'])} | {100 * (row['pgd'] - row['aa']):+.1f} | {row['by']} |")
    lines += ["", "Over seeds (mean +- sample sd, in %):", "",
              "| method | checkpoint | n | clean | PGD-20 | AutoAttack | PGD-20 - AA |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in table:
        groups.setdefault((SEED_SUFFIX.sub("", row["run"]), row["checkpoint"]), []).append(row)
    for (method, checkpoint), members in sorted(groups.items()):
        lines.append(f"| {method} | {checkpoint} | {len(members)} | {_mean_sd([m['clean'] for m in members])} | "
                     f"{_mean_sd([m['pgd'] for m in members])} | {_mean_sd([m['aa'] for m in members])} | "
                     f"{_mean_sd([m['pgd'] - m['aa'] for m in members])} |")
    return "\n".join(lines + _best_minus_last(table) + _paired(table)) + "\n"


def _best_minus_last(table: list[dict]) -> list[str]:
    """The robust gap between a run's best and last checkpoints under AutoAttack, for
    the runs attacked at both, over seeds."""
    by_run: dict[str, dict[str, dict]] = {}
    for row in table:
        by_run.setdefault(row["run"], {})[row["checkpoint"]] = row
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for run, checkpoints in by_run.items():
        if "best" in checkpoints and "last" in checkpoints:
            groups.setdefault(SEED_SUFFIX.sub("", run), []).append((checkpoints["best"], checkpoints["last"]))
    if not groups:
        return []
    lines = ["", "Best minus last checkpoint, for the runs attacked at both (mean +- sample sd over seeds, in %):", "",
             "| method | n | AA best | AA last | AA best - last | PGD-20 best - last |", "|---|---|---|---|---|---|"]
    for method, pairs in sorted(groups.items()):
        lines.append(f"| {method} | {len(pairs)} | {_mean_sd([best['aa'] for best, _ in pairs])} | "
                     f"{_mean_sd([last['aa'] for _, last in pairs])} | "
                     f"{_mean_sd([best['aa'] - last['aa'] for best, last in pairs])} | "
                     f"{_mean_sd([best['pgd'] - last['pgd'] for best, last in pairs])} |")
    return lines


def _paired(table: list[dict]) -> list[str]:
    """AutoAttack of each method minus PGD-AT's on the same seed, as the experiment report pairs runs."""
    # The report's columns this table has numbers for.
    columns = [column for column in PAIRED_COLUMNS if column[0] in ("PGD-20 last", "AA last", "clean last")]
    lines = []
    for checkpoint in sorted({row["checkpoint"] for row in table}):
        # The report's readers read a run's "last" entry; each checkpoint's numbers go
        # there in turn, and its columns carry its own name.
        runs = [{"run": row["run"], "checkpoints": {"last": {"autoattack": row["aa"], "pgd": row["pgd"],
                                                            "clean": row["clean"]}}}
                for row in table if row["checkpoint"] == checkpoint]
        named = [(label.replace(" last", f" {checkpoint}"), read) for label, read in columns]
        paired = paired_differences(runs, columns=named)
        if paired:
            lines += paired[:2] + [f"({checkpoint} checkpoints)", ""] + paired[3:]
    return lines


_CPU_ARCHITECTURES = {"x86_64", "AMD64", "aarch64", "arm64", "i386"}


def attacked_by(report: dict) -> str:
    """Which AutoAttack implementation, on which machine, wrote a result file."""
    code = "ours" if report["suite"].startswith("ours") else f"torchattacks ({report['suite']} suite)"
    device = report["machine"]["device"]  # a GPU's name, or the platform's CPU architecture
    return f"{code}, {'CPU' if device in _CPU_ARCHITECTURES else device}"


def load_results(paths: list[Path]) -> dict[str, dict]:
    """Every checkpoint's result from the files, tagged with who attacked it; one result per checkpoint."""
    results = {}
    for path in paths:
        report = json.loads(path.read_text())
        for key, result in report["models"].items():
            if key in results:
                raise SystemExit(f"{key} is in more than one result file (the second: {path})")
            results[key] = {**result, "attacked_by": attacked_by(report)}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("results", nargs="+", type=Path,
                        help="JSON files written by autoattack_torch.py or autoattack_ours.py")
    args = parser.parse_args()
    print(markdown(rows(args.runs_dir, load_results(args.results))), end="")


if __name__ == "__main__":
    main()
