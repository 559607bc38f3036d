"""``sglr``: train, evaluate and export adversarially robust classifiers."""

from __future__ import annotations

import functools
import os
import signal
import sys

# TensorFlow's C++ start-up chatter hides our own output; users can set it back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click
from rich.console import Console

from sglr_keras.errors import Interrupted, UserError

# Progress and logs go to stderr; results (tables, JSON summaries) to stdout.
console = Console(stderr=True)
results_console = Console()


def user_errors(command):
    """Print a UserError as one line and exit 2, without a traceback; Ctrl-C ends
    with exit 130. TensorFlow is first imported here, once the flags parsed, so
    ``--help`` and flag errors stay fast."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sglr_keras.signals import PromptExit

        try:
            with PromptExit():
                quiet_tensorflow()
                return command(*args, **kwargs)
        except UserError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Interrupted as err:
            console.show_cursor(True)
            console.print(str(err), highlight=False, soft_wrap=True)
            sys.exit(130)
        except KeyboardInterrupt:
            console.show_cursor(True)
            console.print("interrupted; rerun the same command to go on (runs resume from their last finished "
                          "epoch, experiments skip finished runs and cached attacks)", highlight=False)
            sys.exit(130)

    return wrapper


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up lines and Python-side notices (retracing, pfor
    fallbacks) unless --verbose."""
    if os.environ.get("SGLR_VERBOSE") == "1":
        return
    import logging

    if "tensorflow" not in sys.modules:
        # TensorFlow 2.21's C++ start-up lines (oneDNN, CUDA stubs, absl) ignore
        # TF_CPP_MIN_LOG_LEVEL; they are written while the module loads, so the
        # process's stderr is muted for the import alone. An import error still
        # surfaces as a Python exception afterwards.
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
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
    # A shell starts background jobs with SIGINT ignored, and Python then keeps
    # it ignored; `kill -INT` (or Ctrl-C after `fg`) should still stop a run cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with_commands()()


if __name__ == "__main__":
    main()
