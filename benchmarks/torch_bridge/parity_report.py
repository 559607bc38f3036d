"""Overlay our training curves with the SGLR authors' loop (authors_loop.py)
trained on the same data, labels and points: loss, train adversarial accuracy
and held-out PGD-10 per epoch, mean and sample sd over seeds, plus the final
PGD-20 at the best and the last epoch.

    python benchmarks/torch_bridge/parity_report.py \\
        --ours "PGD-AT=runs/label_noise_parity/pgd-at,runs/label_noise_parity/pgd-at-seed1,..." \\
        --theirs "PGD-AT=runs/parity_torch/at-seed0.jsonl,..." --out docs/results/parity
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CURVES = (("loss", "loss"), ("acc", "train adversarial accuracy"), ("test_robust_acc", "held-out PGD-10"))


def _ours(run_dir: Path) -> tuple[list[dict], dict]:
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    from sglr_keras.reproduce.final import read_final_record

    final = {}
    for checkpoint in ("best", "last"):
        record = read_final_record(run_dir / f"{checkpoint}.keras")
        if record is not None:
            final[checkpoint] = record.report.robust_accuracy("pgd")
    return history, final


def _theirs(path: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    history = [line for line in lines if "epoch" in line]
    record = next((line for line in lines if "final" in line), {})
    if not record.get("last_state_copied"):
        return history, {}  # an early version's final attacked the best state twice: not used
    return history, {k: v["pgd20_acc"] for k, v in record["final"].items()}


def _stats(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _curve(histories: list[list[dict]], key: str) -> dict[int, list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            if record.get(key) is not None:
                by_epoch.setdefault(record["epoch"], []).append(float(record[key]))
    return {e: v for e, v in by_epoch.items() if len(v) == len(histories)}


def _fmt(values, scale, digits=1):
    mean, sd = _stats(values)
    if len(values) > 1:
        return f"{scale * mean:.{digits}f} +- {scale * sd:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def report(groups: dict[str, dict[str, list]], epochs: list[int]) -> tuple[str, dict]:
    """Markdown tables and a JSON summary; ``groups[method][impl]`` = [(history, final), ...]."""
    lines, summary = [], {}
    for method, impls in groups.items():
        summary[method] = {}
        lines += [f"### {method}", "", "| epoch | " + " | ".join(
            f"{label} ({impl})" for _, label in CURVES for impl in impls) + " |",
            "| --- |" + " --- |" * (len(CURVES) * len(impls))]
        curves = {impl: {key: _curve([h for h, _ in runs], key) for key, _ in CURVES} for impl, runs in impls.items()}
        for epoch in epochs:
            cells = []
            for key, _ in CURVES:
                scale = 1 if key == "loss" else 100
                for impl in impls:
                    values = curves[impl][key].get(epoch)
                    cells.append(_fmt(values, scale, 2 if key == "loss" else 1) if values else "")
            if any(cells):
                lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
        lines += ["", "| implementation | seeds | curve best (epoch) | curve last | curve best - last "
                  "| final PGD-20 best | final PGD-20 last | final best - last |", "| --- |" + " --- |" * 7]
        for impl, runs in impls.items():
            # The curve: held-out PGD-10 on the selection points, the same for both implementations.
            curve_best, curve_last, best_epochs = [], [], []
            for history, _ in runs:
                evaluated = [r for r in history if r.get("test_robust_acc") is not None]
                top = max(evaluated, key=lambda r: r["test_robust_acc"])
                curve_best.append(top["test_robust_acc"])
                curve_last.append(evaluated[-1]["test_robust_acc"])
                best_epochs.append(top["epoch"])
            curve_gap = [b - la for b, la in zip(curve_best, curve_last)]
            finals = [f for _, f in runs if "best" in f and "last" in f]
            best, last = [f["best"] for f in finals], [f["last"] for f in finals]
            gap = [b - la for b, la in zip(best, last)]
            final_cells = ([_fmt(best, 100), _fmt(last, 100), _fmt(gap, 100)] if finals else ["", "", ""])
            final_cells[0] += f" ({len(finals)} seeds)" if finals and len(finals) != len(runs) else ""
            lines.append(f"| {impl} | {len(runs)} | {_fmt(curve_best, 100)} ({', '.join(map(str, best_epochs))}) | "
                         f"{_fmt(curve_last, 100)} | {_fmt(curve_gap, 100)} | " + " | ".join(final_cells) + " |")
            summary[method][impl] = {"curve_best": curve_best, "curve_last": curve_last, "curve_gap": curve_gap,
                                     "best_epochs": best_epochs, "final_best": best, "final_last": last,
                                     "final_gap": gap,
                                     "curves": {key: {str(e): v for e, v in curves[impl][key].items()}
                                                for key, _ in CURVES}}
        lines.append("")
    return "\n".join(lines), summary


def plot(groups, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), len(CURVES), figsize=(4.2 * len(CURVES), 3.2 * len(groups)), squeeze=False)
    for row, (method, impls) in enumerate(groups.items()):
        for col, (key, label) in enumerate(CURVES):
            ax = axes[row][col]
            for impl, runs in impls.items():
                curve = _curve([h for h, _ in runs], key)
                epochs = sorted(curve)
                mean = np.array([np.mean(curve[e]) for e in epochs])
                sd = np.array([np.std(curve[e], ddof=1) if len(curve[e]) > 1 else 0 for e in epochs])
                ax.plot(epochs, mean, label=impl)
                ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.25)
            ax.set_title(f"{method}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parse(specs: list[str], reader, epochs: int | None = None) -> dict[str, list]:
    """Runs by method; with ``epochs``, only runs that reached that epoch (finished)."""
    groups = {}
    for spec in specs:
        method, _, paths = spec.partition("=")
        runs = [reader(Path(p)) for p in paths.split(",") if p and Path(p).exists()]
        groups[method] = [r for r in runs if epochs is None or (r[0] and r[0][-1]["epoch"] >= epochs)]
    return groups


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", action="append", default=[], help="METHOD=RUN_DIR,RUN_DIR,... (repeatable)")
    parser.add_argument("--theirs", action="append", default=[], help="METHOD=CURVE.jsonl,... (repeatable)")
    parser.add_argument("--epochs", default="2,4,6,10,16,20,26,30,36,40,46,50,56,60")
    parser.add_argument("--finished", type=int, default=60, help="leave out runs that stopped before this epoch")
    parser.add_argument("--out", required=True, help="folder for parity.md, parity.json, parity.png")
    args = parser.parse_args()
    ours, theirs = _parse(args.ours, _ours, args.finished), _parse(args.theirs, _theirs, args.finished)
    groups = {m: {"ours (Keras)": ours.get(m, []), "authors' loop (PyTorch)": theirs.get(m, [])}
              for m in dict.fromkeys([*ours, *theirs])}
    groups = {m: {impl: runs for impl, runs in impls.items() if runs} for m, impls in groups.items()}
    text, summary = report(groups, [int(e) for e in args.epochs.split(",")])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.md").write_text(text)
    (out / "parity.json").write_text(json.dumps(summary, indent=1))
    plot(groups, out / "parity.png")
    print(text)


if __name__ == "__main__":
    main()
