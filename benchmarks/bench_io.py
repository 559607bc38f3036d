"""What every benchmark prints: the machine it ran on, and the JSON report."""

import json
import os
import platform

import tensorflow as tf


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def emit(report: dict, out: str | None) -> None:
    """Print the report as JSON and, with ``out``, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as handle:
            handle.write(text + "\n")
