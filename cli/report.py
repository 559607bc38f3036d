"""``sglr report``."""

import click

from sglr_keras.cli.main import console, results_console, sglr, user_errors


@sglr.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the PNG plots and report.md.")
@user_errors
def report(run_dirs, out_dir):
    """Plot and tabulate training runs (robust accuracy, gradient norm, gap)."""
    from sglr_keras.report import write_report

    plots, table = write_report(list(run_dirs), out_dir)
    results_console.print(table.read_text().split("\n\n")[2], highlight=False, soft_wrap=True)
    console.print(f"wrote {table} and {len(plots)} plots in {out_dir}")
