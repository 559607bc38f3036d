"""``sglr``: train, evaluate and export adversarially robust classifiers."""

from __future__ import annotations

import functools
import os
import sys

# TensorFlow's C++ start-up chatter hides our own output; users can set it back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click
from rich.console import Console

from sglr_keras.errors import UserError

console = Console(stderr=True)


def user_errors(command):
    """Print a UserError as one line and exit 2, without a traceback; Ctrl-C ends
    with exit 130. TensorFlow is first imported here, once the flags parsed, so
    ``--help`` and flag errors stay fast."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            quiet_tensorflow()
            return command(*args, **kwargs)
        except UserError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.show_cursor(True)
            console.print("interrupted; rerun the same command to resume (runs resume from the last finished "
                          "epoch, experiments from the last finished run or checkpoint)", highlight=False)
            sys.exit(130)

    return wrapper


def quiet_tensorflow() -> None:
    """Hide TensorFlow's Python-side notices (retracing, pfor fallbacks) unless --verbose."""
    if os.environ.get("SGLR_VERBOSE") == "1":
        return
    import logging

    import absl.logging
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sglr-keras")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's start-up and tracing messages.")
def sglr(verbose):
    """Adversarial training with Self-Guided Label Refinement (SGLR), robust
    evaluation (PGD, CW, AutoAttack) and export for TF Serving.

    Accuracies are percentages on screen and fractions (0-1) in JSON files."""
    if verbose:
        # Read by TensorFlow when it is first imported, which happens after this.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ["SGLR_VERBOSE"] = "1"


def with_commands() -> click.Group:
    """The ``sglr`` group with every command registered (each module adds its own)."""
    from sglr_keras.cli import (eval as _eval, export as _export, report as _report,  # noqa: F401
                                reproduce as _reproduce, train as _train)

    return sglr


def main():
    with_commands()()


if __name__ == "__main__":
    main()
