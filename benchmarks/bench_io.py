"""What every benchmark prints: the machine it ran on, and the JSON report."""

import json
import os
import platform

import tensorflow as tf


def machine() -> dict:
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    report = {"device": names[0] if names else f"CPU: {cpu_model()}", "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
              "platform": platform.platform(), "tensorflow": tf.__version__, "gpus": names}
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        # oneDNN (TensorFlow's and PyTorch's) then uses no instruction above this
        # set, as on an older CPU; the flags above are still the machine's own.
        report["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    return report


def cpu_flags() -> list[str]:
    """The CPU features that decide low-precision speed (AVX-512, AVX512-BF16, AMX)."""
    wanted = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def emit(report: dict, out: str | None) -> None:
    """Print the report as JSON and, with ``out``, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as handle:
            handle.write(text + "\n")
