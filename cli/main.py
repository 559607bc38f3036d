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
    """Print a UserError as one line and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sglr-keras")
def sglr():
    """Adversarial training with Self-Guided Label Refinement (SGLR), robust
    evaluation (PGD, CW, AutoAttack) and export for TF Serving."""


def with_commands() -> click.Group:
    """The ``sglr`` group with every command registered (each module adds its own)."""
    from sglr_keras.cli import (eval as _eval, export as _export, report as _report,  # noqa: F401
                                reproduce as _reproduce, train as _train)

    return sglr


def main():
    import tensorflow as tf

    # Retracing notices from attacks built per evaluation are expected, not actionable.
    tf.get_logger().setLevel("ERROR")
    with_commands()()


if __name__ == "__main__":
    main()
