"""How busy a train step keeps the cores: wall seconds, this process's CPU
seconds and their ratio (cores busy) for each step, ours and then PyTorch's
reference step (`torch_step.py`, channels_last) in a process of its own; and,
with ``--elementwise``, TensorFlow's element-wise ops in bfloat16 against float32.

    python benchmarks/cores_busy.py --precision mixed_bfloat16 --batch-size 64 --steps 4 --torch
    python benchmarks/cores_busy.py --elementwise
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def per_step(run_step, steps: int) -> list[dict]:
    """Wall and CPU seconds of each of ``steps`` calls of ``run_step``."""
    samples = []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        run_step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        samples.append({"wall_seconds": wall, "cpu_seconds": cpu, "cores_busy": cpu / wall})
    return samples


def ours(args) -> list[dict]:
    from train_step import make_trainer, synthetic_batches

    shape = (32, 32, 3)
    _, dataset = synthetic_batches(args.batch_size, shape, 10)
    trainer = make_trainer("pgd-at", args.arch, shape, 10, args.batch_size, 10, False, args.precision)
    trainer.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace, warm up
    train_function, stream = trainer.make_train_function(), iter(dataset)  # what fit calls once per step
    return per_step(lambda: train_function(stream), args.steps)


def torch_side(args) -> list[dict]:
    # Its own process, without TensorFlow (each library brings its own oneDNN);
    # args.precision is PyTorch's name for it here.
    from torch_step import warm_step

    step = warm_step(args.arch, (32, 32, 3), 10, args.batch_size, 10, args.precision, "channels_last")
    return per_step(step, args.steps)


def elementwise() -> dict:
    """Milliseconds per call of the step's element-wise ops on a 64x32x32x64 tensor."""
    import tensorflow as tf

    timings = {}
    for dtype in (tf.bfloat16, tf.float32):
        x = tf.cast(tf.random.normal((64, 32, 32, 64)), dtype)
        dy = tf.cast(tf.random.normal((64, 32, 32, 64)), dtype)
        ops = {"ReluGrad": lambda: tf.raw_ops.ReluGrad(gradients=dy, features=x), "Relu": lambda: tf.nn.relu(x),
               "AddV2": lambda: x + dy, "Cast to float32": lambda: tf.cast(x, tf.float32)}
        for name, op in ops.items():
            compiled = tf.function(op)
            compiled()
            start = time.perf_counter()
            for _ in range(50):
                compiled()
            timings[f"{name}[{dtype.name}]"] = (time.perf_counter() - start) / 50 * 1e3
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="mixed_bfloat16", help="float32 or mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--torch", action="store_true", help="also PyTorch's step, in its own process")
    parser.add_argument("--side", choices=["ours", "torch"], default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--elementwise", action="store_true")
    args = parser.parse_args()
    if args.elementwise:
        print(json.dumps({"elementwise_ms": elementwise()}, indent=2))
        return
    if args.side == "torch":
        print(json.dumps(torch_side(args)))
        return
    from train_step import TORCH_PRECISION

    report = {"arch": args.arch, "batch_size": args.batch_size, "precision": args.precision, "ours": ours(args)}
    if args.torch:
        command = [sys.executable, __file__, "--side", "torch", "--arch", args.arch, "--batch-size",
                   str(args.batch_size), "--precision", TORCH_PRECISION[args.precision], "--steps", str(args.steps)]
        report["torch_channels_last"] = json.loads(subprocess.run(command, capture_output=True, text=True,
                                                                  check=True).stdout)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
