"""Images/s and CPU use (CPU-seconds per second) of single PGD-AT train steps, one
line per step, to see whether every step keeps every core busy:

    python benchmarks/step_times.py --batch-norm fused --steps 6
    python benchmarks/step_times.py --batch-norm keras --intra-op 3 --inter-op 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from train_step import make_trainer, synthetic_batches  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--batch-norm", choices=["fused", "keras"], default="fused")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--intra-op", type=int, help="TensorFlow's intra-op threads (default: its own choice)")
    parser.add_argument("--inter-op", type=int, help="TensorFlow's inter-op threads (default: its own choice)")
    args = parser.parse_args()
    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    _, dataset = synthetic_batches(args.batch_size, (32, 32, 3), 10)
    trainer = make_trainer("pgd-at", args.arch, (32, 32, 3), 10, args.batch_size, 10, False, args.precision,
                           args.batch_norm)
    trainer.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace, warm up
    for step in range(args.steps):
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"step {step + 1}: {args.batch_size / wall:.1f} images/s, {cpu / wall:.2f} CPU-seconds per second")


if __name__ == "__main__":
    main()
