"""``sglr reproduce``."""

import shlex
from pathlib import Path

import click

from sglr_keras.cli.main import console, sglr, user_errors


@sglr.command()
@click.argument("experiment_path", metavar="EXPERIMENT", type=click.Path(dir_okay=False))
@click.option("--runs-dir", type=click.Path(file_okay=False),
              help="Where the run folders go (default: runs/<experiment name>).")
@click.option("--report-dir", type=click.Path(file_okay=False),
              help="Where results.md, results.json and plots/ go (default: <runs-dir>/report).")
@click.option("--only", multiple=True, help="Train and evaluate only this run (repeatable); the report still "
              "covers every finished run, so separate processes can share the work.")
@click.option("--no-eval", is_flag=True, help="Train only; skip the final attacks.")
@click.option("--report-only", is_flag=True, help="Train and attack nothing; write the report from the runs "
              "already finished in --runs-dir.")
@user_errors
def reproduce(experiment_path, runs_dir, report_dir, only, no_eval, report_only):
    """Train every run of an experiment (configs/repro/) with the same seed and
    budget, attack best and last checkpoints (PGD-20, CW, AutoAttack) and write
    tables, plots and JSON. Rerunning resumes where it stopped."""
    from sglr_keras.errors import UserError
    from sglr_keras.reproduce import load_experiment, reproduce as run_experiment, write_report

    experiment = load_experiment(experiment_path)
    runs_dir = Path(runs_dir or Path("runs") / experiment.name)
    report_dir = Path(report_dir or runs_dir / "report")
    words = ["sglr", "reproduce", experiment_path, "--runs-dir", str(runs_dir), "--report-dir", str(report_dir)]
    words += [w for name in only for w in ("--only", name)] + (["--no-eval"] if no_eval else [])
    command = " ".join(shlex.quote(w) for w in words)
    if report_only:
        document = write_report(experiment, runs_dir, report_dir, command)
        if not document["runs"]:
            raise UserError(f"no finished runs of '{experiment_path}' in '{runs_dir}'; pass the --runs-dir "
                            "they were trained in")
    else:
        document = run_experiment(experiment, runs_dir, report_dir, list(only) or None, not no_eval, console,
                                  command)
    console.print(f"{len(document['runs'])} of {len(experiment.runs)} runs finished; "
                  f"report in {report_dir / 'results.md'}")
