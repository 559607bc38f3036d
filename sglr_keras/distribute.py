"""Choosing a ``tf.distribute`` strategy.

``auto`` picks MirroredStrategy when more than one GPU is visible (or the CPU
is split into several logical devices with ``cpu_replicas``), else the default
strategy. ``multi-worker`` reads the cluster from ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

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
        with ClusterWatchdog(tf_config(), cluster_timeout()):
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


DEFAULT_CLUSTER_TIMEOUT = 300.0


def cluster_timeout() -> float:
    """Seconds to wait for every worker of a multi-worker run (``SGLR_CLUSTER_TIMEOUT``)."""
    text = os.environ.get("SGLR_CLUSTER_TIMEOUT", str(DEFAULT_CLUSTER_TIMEOUT))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"SGLR_CLUSTER_TIMEOUT={text!r} must be a number of seconds > 0")
    return value


# Runs in a child process: while TensorFlow waits for the cluster the parent
# holds the interpreter lock, so no thread of its own could speak or act.
_WATCHDOG = """
import json, os, select, signal, socket, sys, time
parent, timeout, every = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
config, signals = json.loads(sys.argv[4]), int(sys.argv[5])
# Ctrl-C reaches this process too (same process group): the parent's byte below decides.
signal.signal(signal.SIGINT, signal.SIG_IGN)
def silent():
    me, found = config.get("task", {}), []
    for kind, addresses in config.get("cluster", {}).items():
        for index, address in enumerate(addresses if isinstance(addresses, list) else []):
            if kind == me.get("type", "worker") and index == me.get("index", 0):
                continue
            host, _, port = str(address).rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            except (OSError, ValueError):
                found.append(f"{kind} {index} at {address}")
    return found
deadline = time.monotonic() + timeout
while True:
    ready, _, _ = select.select([sys.stdin, signals], [], [], max(0.0, min(every, deadline - time.monotonic())))
    if signals in ready:
        received = os.read(signals, 64)
        stop = [n for n in received if n in (signal.SIGINT, signal.SIGTERM)]
        if stop:
            name = "SIGTERM" if signal.SIGTERM in stop else "Ctrl-C"
            sys.stderr.write(f"\\n{name}: stopped while waiting for the multi-worker cluster to form; "
                             "nothing was trained or written\\n")
            sys.stderr.flush()
            os.kill(parent, signal.SIGKILL)
            sys.exit(2)
    if sys.stdin in ready:
        sys.exit(0)  # the parent closed the pipe: the cluster formed (or the parent ended)
    missing = silent()
    if time.monotonic() < deadline:
        if missing:
            sys.stderr.write("waiting for the cluster to form: " + ", ".join(missing) + " not answering yet\\n")
        continue
    who = ", ".join(missing) if missing else "a worker that answers but never joins"
    sys.stderr.write(f"error: the multi-worker cluster did not form within {timeout:.0f} s: {who}; start every "
                     "worker with the same TF_CONFIG cluster and its own task index, or fix the address "
                     "(SGLR_CLUSTER_TIMEOUT sets the wait)\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
    sys.exit(2)
"""


class ClusterWatchdog:
    """TensorFlow's multi-worker strategy waits until every worker has joined,
    silently and holding the interpreter lock (so no Python thread or signal
    handler runs). A child process says who is missing while it waits and ends
    the waiting process when the cluster has not formed within ``timeout``
    seconds, naming the workers that do not answer. Ctrl-C ends the wait too:
    while it lasts, Python's C-level handler writes the signal number
    (``signal.set_wakeup_fd``) into a pipe that the child reads, since no thread
    of the waiting process can run. SIGTERM does not: during the wait
    TensorFlow's preemption notifier replaces the SIGTERM handler with its own,
    which only records the signal; the timeout (or SIGKILL) ends it."""

    def __init__(self, config: dict, timeout: float, report_every: float = 30.0):
        self.config, self.timeout, self.report_every = config, timeout, report_every
        self._child = None

    def __enter__(self):
        read_end, self._signals = os.pipe()
        os.set_blocking(self._signals, False)
        self._child = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.timeout), str(self.report_every),
             json.dumps(self.config), str(read_end)], stdin=subprocess.PIPE, pass_fds=(read_end,))
        os.close(read_end)
        self._previous_fd = None
        try:  # main thread only; elsewhere the timeout alone ends the wait
            self._previous_fd = signal.set_wakeup_fd(self._signals, warn_on_full_buffer=False)
        except ValueError:
            pass
        return self

    def __exit__(self, *exc):
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        os.close(self._signals)
        self._child.stdin.close()
        self._child.wait()
        return False
