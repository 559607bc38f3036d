"""``reproduce``: train the selected runs, attack their checkpoints, report."""

from __future__ import annotations

import functools
from pathlib import Path

from sglr_keras.reproduce.experiment import Experiment, select_runs
from sglr_keras.reproduce.final import evaluate_checkpoint
from sglr_keras.reproduce.report import write_report


def reproduce(experiment: Experiment, runs_dir: Path, report_dir: Path, only: list[str] | None = None,
              evaluate: bool = True, console=None, command: str = "sglr reproduce") -> dict:
    """Train and evaluate the selected runs, then write the report for every run
    of the experiment that has finished training."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sglr_keras.data import load_dataset
    from sglr_keras.errors import RunFolderBusy
    from sglr_keras.training.run import train

    console = console or Console(stderr=True)
    selected = select_runs(experiment, only)
    for name in selected:
        config = experiment.run_config(name)
        console.rule(f"{experiment.name}: {name} ({config.method})")
        try:
            train(config, runs_dir / name, console=console)
        except RunFolderBusy:
            # Several processes may share one --only list: leave the run to the one training it.
            console.print(f"{name}: another process is training it; skipped here", highlight=False)
            continue
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

                report = evaluate_checkpoint(path, config, experiment.final, load_bundle, on_attack_start,
                                             lambda n, task=task: progress.advance(task, n), run=name).report
            summary = ", ".join(f"{a.name} {100 * a.robust_accuracy:.1f}" for a in report.attacks)
            console.print(f"{name} {checkpoint}: clean {100 * report.clean_accuracy:.1f}, {summary}",
                          highlight=False)

    return write_report(experiment, runs_dir, report_dir, command)


