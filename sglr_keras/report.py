"""Plots and a markdown table that compare training runs.

Robust overfitting shows in curves: test robust accuracy peaking and falling
while train robust accuracy keeps rising, and the loss-gradient norm growing in
the late phase (the paper's Fig. 1).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from sglr_keras.errors import UserError  # noqa: E402
from sglr_keras.runs import RunFolder  # noqa: E402
from sglr_keras.training.callbacks import read_history  # noqa: E402
from sglr_keras.runs.summary import summarize  # noqa: E402

PANELS = (
    ("robust_accuracy.png", "PGD robust accuracy", [("test_robust_acc", "-", "test"), ("train_robust_acc", "--", "train")]),
    ("clean_accuracy.png", "clean accuracy", [("test_clean_acc", "-", "test"), ("train_clean_acc", "--", "train")]),
    ("gradient_norm.png", "loss-gradient L2 norm (epoch mean)", [("grad_norm", "-", "")]),
    ("generalisation_gap.png", "train robust - test robust accuracy", [("robust_gap", "-", "")]),
)


def load_runs(run_dirs: list[str | Path]) -> dict[str, list[dict]]:
    runs = {}
    for run_dir in map(Path, run_dirs):
        history = read_history(run_dir)
        if not history:
            raise UserError(f"'{run_dir}' has no {RunFolder(run_dir).history_jsonl.name}; pass run folders written "
                            "by sglr train")
        runs[run_dir.name if run_dir.name not in runs else str(run_dir)] = history
    return runs


def plot_runs(runs: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, title, series in PANELS:
        figure, axes = plt.subplots(figsize=(6.4, 4.0))
        for index, (name, history) in enumerate(runs.items()):
            color = f"C{index % 10}"
            for key, style, label in series:
                points = [(r["epoch"], r[key]) for r in history if key in r]
                if points:
                    epochs, values = zip(*points)
                    axes.plot(epochs, values, style, color=color, label=f"{name} {label}".strip())
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = out_dir / filename
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def markdown_table(runs: dict[str, list[dict]]) -> str:
    lines = ["| run | epochs | best epoch | best test robust | last test robust | best - last | "
             "last test clean | last train robust | last ECE |",
             "|---|---|---|---|---|---|---|---|---|"]

    def pct(value):
        return "" if value is None else f"{100 * value:.2f}"

    for name, history in runs.items():
        s = summarize(history)
        lines.append(
            f"| {name} | {s['epochs']} | {s['best_epoch']} | {pct(s['best_test_robust_acc'])} | "
            f"{pct(s['last_test_robust_acc'])} | {pct(s.get('best_minus_last_robust_acc'))} | "
            f"{pct(s['last_test_clean_acc'])} | {pct(s['last_train_robust_acc'])} | {pct(s['last_test_ece'])} |"
        )
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> tuple[list[Path], Path]:
    """Plots and ``report.md`` for the runs, written to ``out_dir``."""
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    try:
        plots = plot_runs(runs, out_dir)
        table_path = out_dir / "report.md"
        images = "".join(f"![{p.stem}]({p.name})\n" for p in plots)
        table_path.write_text("# Runs\n\nAccuracies in %.\n\n" + markdown_table(runs) + "\n" + images)
    except OSError as err:  # a read-only or full --out
        raise UserError(f"cannot write the report to --out '{out_dir}' ({err.strerror or err}); choose a writable "
                        "folder")
    return plots, table_path
