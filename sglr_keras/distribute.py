"""Choosing a ``tf.distribute`` strategy.

``auto`` picks MirroredStrategy when more than one GPU is visible (or the CPU
is split into several logical devices with ``cpu_replicas``), else the default
strategy. ``multi-worker`` reads the cluster from ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from sglr_keras.errors import UserError


def split_cpu(replicas: int) -> list[str]:
    """Split the first CPU into ``replicas`` logical devices (must run before TF
    initialises its devices); returns their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != replicas:
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError:
            raise UserError(
                f"cannot split the CPU into {replicas} replicas after TensorFlow has started; "
                "pass --cpu-replicas in a fresh process"
            )
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str, cpu_replicas: int = 1) -> tf.distribute.Strategy:
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy multi-worker needs TF_CONFIG describing the cluster; see the README")
        tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    cpu_devices = split_cpu(cpu_replicas) if cpu_replicas > 1 else []
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or cpu_replicas > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    devices = cpu_devices if cpu_replicas > 1 and not gpus else None
    return tf.distribute.MirroredStrategy(devices=devices)


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(
            f"batch_size {batch_size} is not divisible by the {replicas} replicas; "
            f"use a multiple of {replicas}"
        )


def tf_config() -> dict:
    """``TF_CONFIG`` as a mapping, or a UserError saying what is wrong with it."""
    text = os.environ.get("TF_CONFIG", "{}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos}); set it to e.g. "
                        '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')
    task = value.get("task", {}) if isinstance(value, dict) else None
    cluster = value.get("cluster", {}) if isinstance(value, dict) else None
    if not isinstance(task, dict) or not isinstance(cluster, dict) or not isinstance(task.get("index", 0), int):
        raise UserError("TF_CONFIG must be a mapping with a 'cluster' mapping and a 'task' mapping "
                        '(e.g. {"type": "worker", "index": 0}); see the README\'s multi-worker section')
    return value


def task_index() -> int:
    return int(tf_config().get("task", {}).get("index", 0))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints and logs in a multi-worker run."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    config = tf_config()
    task = config.get("task", {})
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and task.get("index", 0) == 0
