"""Record TensorFlow's profiler trace of one PGD-AT train step (after warm-up),
for `op_table.py` to break down by op type:

    python benchmarks/profile_step.py --precision mixed_bfloat16 --batch-size 32 --logdir /tmp/prof
    python -m venv /tmp/xp && /tmp/xp/bin/pip install xprof   # xprof wants a newer protobuf than TensorFlow
    /tmp/xp/bin/python benchmarks/op_table.py /tmp/prof

``--batch-norm keras`` profiles Keras's own batch-norm ops instead of the fused
kernels, ``--threads 1`` pins TensorFlow to one thread (shares of one core).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from train_step import make_trainer, pin_threads, synthetic_batches  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--input-shape", default="32,32,3")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--batch-norm", choices=["fused", "keras"], default="fused")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--logdir", required=True)
    args = parser.parse_args()
    if args.threads:
        pin_threads(args.threads)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    _, dataset = synthetic_batches(args.batch_size, shape, 10)
    trainer = make_trainer("pgd-at", args.arch, shape, 10, args.batch_size, args.attack_steps, False,
                           args.precision, args.batch_norm)
    trainer.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace, warm up
    tf.profiler.experimental.start(args.logdir)
    trainer.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    tf.profiler.experimental.stop()
    print(f"trace in {args.logdir}; break it down with: python benchmarks/op_table.py {args.logdir}")


if __name__ == "__main__":
    main()
