"""``sglr eval``."""

import json
import os
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sglr_keras.attacks import ATTACK_NAMES
from sglr_keras.cli.main import console, results_console, sglr, user_errors

ATTACK_CHOICES = ["clean", *ATTACK_NAMES, "all"]


@sglr.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A .keras classifier mapping [0,1] images to logits, or an exported SavedModel folder.")
@click.option("--dataset", help="Data set name or npz:PATH (default: the one the run trained on).")
@click.option("--data-dir", help="Local data folder or TFDS data dir.")
@click.option("--attack", "attack_names", type=click.Choice(ATTACK_CHOICES), multiple=True, default=["pgd"],
              show_default=True, help="Attack to run; repeat for several. 'all' = fgsm, pgd, cw, autoattack "
              "and the gradient-masking checks.")
@click.option("--version", "aa_version", type=click.Choice(["standard", "plus", "rand"]), default="standard",
              show_default=True, help="AutoAttack version (rand: for randomised models).")
@click.option("--norm", type=click.Choice(["Linf", "L2"]), default="Linf", show_default=True,
              help="Threat model (Square and FAB are L-inf only).")
@click.option("--eps", help="L-inf radius, e.g. 8/255 (default: the run's training eps, else 8/255).")
@click.option("--steps", type=int, help="Attack iterations (default: PGD 20, CW 30, APGD/FAB 100, Square 5000 queries).")
@click.option("--step-size", help="Step size (default eps/4).")
@click.option("--n-examples", type=int, default=1000, show_default=True, help="Test examples (seeded subset).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the subset and random starts.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the results as JSON here ('-': standard output).")
@click.option("--include-selection-points", is_flag=True, help="Keep the test points a run used to pick its "
              "best epoch (left out by default for checkpoints in a run folder).")
@user_errors
def evaluate(checkpoint, dataset, data_dir, attack_names, aa_version, norm, eps, steps, step_size, n_examples,
             batch_size, seed, json_path, include_selection_points):
    """Clean and robust accuracy of a checkpoint under attack, AutoAttack included."""
    import keras

    from sglr_keras import checkpoints
    from sglr_keras.data import load_dataset
    from sglr_keras.errors import UserError
    from sglr_keras.estimate import evaluation_passes, long_work_note
    from sglr_keras.evaluation import evaluate as evaluate_model
    from sglr_keras.io import atomic_write_text

    run = checkpoints.run_info_for(checkpoint)
    dataset = dataset or run.get("run", {}).get("dataset")
    if dataset is None:
        raise UserError("no --dataset given and the checkpoint is not in a run folder; pass --dataset")
    eps, step_size, attacks, diagnose = _checked_options(run, attack_names, norm, eps, steps, step_size, n_examples,
                                                         batch_size, seed, json_path)
    model = checkpoints.load_classifier(checkpoint)
    bundle = load_dataset(dataset, data_dir)
    checkpoints.check_compatible(model, bundle.input_shape, bundle.num_classes, dataset)
    x, y, excluded = _held_out_points(run, bundle, dataset, n_examples, seed, include_selection_points)
    keras.utils.set_random_seed(seed)
    note = long_work_note("this evaluation", evaluation_passes(attacks, len(y), steps, bundle.num_classes), model,
                          bundle.input_shape)
    if note:
        console.print(note, highlight=False, soft_wrap=True)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("clean", total=len(y))

        def on_attack_start(name, n_points):
            progress.reset(task, total=n_points, description=name)

        report = evaluate_model(model, x, y, attacks, eps, norm, steps, step_size, batch_size, aa_version, seed,
                                diagnose, on_attack_start, lambda n: progress.advance(task, n))
    _show(report, f"{checkpoint} on {dataset} ({len(y)} test points, {norm} eps {eps:.4g})", json_path == "-")
    settings = {"dataset": dataset, "data_dir": data_dir, "n_examples": int(len(y)), "eps": eps, "norm": norm,
                "steps": steps, "step_size": step_size, "seed": seed, "autoattack_version": aa_version,
                "excluded_selection_points": len(excluded)}
    checkpoints.record_evaluation(checkpoint, report, settings)
    results = {**report.to_dict(), "checkpoint": str(checkpoint), "dataset": dataset, "seed": seed}
    if json_path == "-":
        click.echo(json.dumps(results, indent=2))
    elif json_path:
        atomic_write_text(json_path, json.dumps(results, indent=2))


def _checked_options(run, attack_names, norm, eps, steps, step_size, n_examples, batch_size, seed, json_path):
    """The options checked before anything loads: (eps, step size, attacks, diagnose)."""
    from sglr_keras.attacks.budget import budget_problem
    from sglr_keras.config import _fraction
    from sglr_keras.errors import UserError
    from sglr_keras.evaluation import ALL

    if norm == "L2" and eps is None:
        raise UserError("--norm L2 needs --eps (an L2 radius, e.g. 0.5 for CIFAR): the run's training eps is an "
                        "L-inf radius")
    eps = _fraction(eps, "--eps") if eps is not None else run.get("config", {}).get("attack", {}).get("eps", 8 / 255)
    step_size = _fraction(step_size, "--step-size") if step_size is not None else None
    problem = budget_problem(eps=eps, norm=norm, step_size=step_size)
    if problem:
        setting, what = problem
        raise UserError(f"--{setting.replace('_', '-')} {what}")
    for flag, value in (("--n-examples", n_examples), ("--batch-size", batch_size), ("--steps", steps)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value} must be at least 1")
    if seed < 0:
        raise UserError(f"--seed {seed} must be >= 0")
    if json_path and json_path != "-":
        # Checked before the (possibly long) evaluation, not after it.
        parent = Path(json_path).resolve().parent
        if not parent.is_dir():
            raise UserError(f"--json '{json_path}': folder '{parent}' does not exist; create it or pick another path")
        if not os.access(parent, os.W_OK):
            raise UserError(f"--json '{json_path}': folder '{parent}' is not writable; pick another path")
    attacks = [a for a in attack_names if a != "clean"]
    diagnose = "all" in attacks or "autoattack" in attacks
    attacks = list(ALL) if "all" in attacks else list(dict.fromkeys(attacks))
    if norm == "L2" and {"fgsm", "square", "fab", "fab-t"} & set(attacks):
        raise UserError("fgsm, square, fab and fab-t are L-inf attacks here; drop them or use --norm Linf")
    return eps, step_size, attacks, diagnose


def _held_out_points(run, bundle, dataset, n_examples, seed, include_selection_points):
    """The test points to attack: ``held_out_indices``'s rule, which leaves out the
    points that picked a run's best epoch unless asked to keep them (x, y, left out)."""
    from sglr_keras.errors import UserError
    from sglr_keras.runs.points import held_out_indices

    selection = run.get("selection_test_indices")
    excluded = list(selection) if selection and dataset == run.get("run", {}).get("dataset") else []
    if excluded and not include_selection_points:
        console.print(f"note: leaving out the {len(excluded)} test points this run used to pick its best epoch "
                      "(--include-selection-points to keep them)", highlight=False)
    elif excluded:
        console.print("warning: the test points include the ones this run used to pick its best epoch; "
                      "best.keras's accuracy on them is biased upwards", highlight=False)
        excluded = []
    x, y = bundle.test_points(held_out_indices(bundle, excluded, n_examples, seed))
    if len(y) == 0:
        raise UserError(f"all {len(bundle.y_test)} test points of {dataset} picked this run's best epoch, so none is "
                        "left to evaluate on; retrain with a smaller evaluation.n_test, or pass "
                        "--include-selection-points (best.keras's accuracy is then biased upwards)")
    return x, y, excluded


def _show(report, title: str, json_to_stdout: bool) -> None:
    """The report as a table, its AutoAttack notes and its diagnostics."""
    table = Table(title=title)
    table.add_column("attack")
    table.add_column("accuracy", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", f"{report.clean_accuracy:.2%}", "")
    for outcome in report.attacks:
        if outcome.name == "autoattack":
            for stage in report.autoattack_stages:
                table.add_row(f"  AA after {stage.attack}", f"{stage.robust_accuracy_after:.2%}", f"{stage.seconds:.1f}")
        label = report.autoattack_label if outcome.name == "autoattack" else outcome.name
        table.add_row(label, f"{outcome.robust_accuracy:.2%}", f"{outcome.seconds:.1f}")
    if report.worst_case_robust_accuracy is not None:
        table.add_row("worst case", f"{report.worst_case_robust_accuracy:.2%}", "")
    # With --json - the JSON is what goes to standard output; the table to stderr.
    (console if json_to_stdout else results_console).print(table)
    for note in report.autoattack_notes:
        console.print(f"note: {note}", highlight=False)
    for check in report.diagnostics:
        mark = "[bold yellow]WARNING[/]" if check["flagged"] else "[green]ok[/]"
        console.print(f"{mark} {check['message']}", highlight=False, soft_wrap=True)
