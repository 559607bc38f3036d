"""Images/s and CPU use (CPU-seconds per second) of single PGD-AT train steps,
timed inside ``fit`` calls, one line per step, and the wall time each fit call
spends outside its steps (making and destroying the dataset iterator):

    python benchmarks/step_times.py --batch-norm fused --fits 6 --steps 2
    python benchmarks/step_times.py --autotune    # tf.data autotuning on, as a plain dataset has it

With ``--autotune`` the fit calls sometimes idle for seconds after their last
step: destroying the iterator waits for tf.data's autotuning thread to end its
current sleep (periods doubling from 10 ms to a minute). That idle time is what
made earlier fit-timed benchmarks bimodal.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from train_step import StepClock, make_trainer, synthetic_batches  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--batch-norm", choices=["fused", "keras"], default="fused")
    parser.add_argument("--fits", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1, help="steps per fit call")
    parser.add_argument("--autotune", action="store_true", help="leave tf.data's autotuning on")
    parser.add_argument("--intra-op", type=int, help="TensorFlow's intra-op threads (default: its own choice)")
    parser.add_argument("--inter-op", type=int, help="TensorFlow's inter-op threads (default: its own choice)")
    args = parser.parse_args()
    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    _, dataset = synthetic_batches(args.batch_size, (32, 32, 3), 10, autotune=args.autotune)
    trainer = make_trainer("pgd-at", args.arch, (32, 32, 3), 10, args.batch_size, 10, False, args.precision,
                           args.batch_norm)
    trainer.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace, warm up
    for fit in range(args.fits):
        wall, cpu = StepClock(time.perf_counter), StepClock(time.process_time)
        start = time.perf_counter()
        trainer.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False, callbacks=[wall, cpu])
        outside = time.perf_counter() - start - sum(wall.seconds)
        for step, (w, c) in enumerate(zip(wall.seconds, cpu.seconds)):
            print(f"fit {fit + 1} step {step + 1}: {args.batch_size / w:.1f} images/s, "
                  f"{c / w:.2f} CPU-seconds per second")
        print(f"fit {fit + 1}: {outside:.2f} s outside the steps")


if __name__ == "__main__":
    main()
