"""Time the train step of each method on the same model and batch, in one run,
for each precision and XLA setting asked for.

Prints JSON: the device (CPU model or GPU name), images/s per method, precision
and XLA setting (median over interleaved repeats, after warm-up; each repeat
is the mean of ``--steps`` steps timed inside one fit call), the ratio
sglr / pgd-at for each combination, the FLOPs of one float32 step (from
TensorFlow's graph profiler), and the machine's float32 matmul rate measured in
the same run.

    python benchmarks/train_step.py --arch resnet18 --batch-size 32 --steps 3
    # whatever device is here, every precision, XLA on and off, JSON into docs/bench/:
    python benchmarks/train_step.py --arch resnet18 --batch-size 128 --methods pgd-at,sglr \
        --precisions float32,mixed_bfloat16,mixed_float16 --jit both --out docs/bench/train_step_$(hostname).json
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench_io import emit, machine  # noqa: E402

from sglr_keras.attacks.training import NoAttack  # noqa: E402
from sglr_keras.config import load_config  # noqa: E402
from sglr_keras.data.example_ids import without_autotuning  # noqa: E402
from sglr_keras.models import build_model  # noqa: E402
from sglr_keras.models.fused_batchnorm import restore_keras_batch_norm  # noqa: E402
from sglr_keras.training.recipe import build_trainer, make_optimizer  # noqa: E402


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul().numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def graph_flops(function, *args) -> float | None:
    """FLOPs of ``function``'s traced graph, by TensorFlow's profiler (best effort)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = tf.function(function).get_concrete_function(*args).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    try:
        return float(model_analyzer.profile(graph, options=options).total_float_ops)
    except Exception:  # a missing count is reported as null
        return None


def step_flops(trainer, batch, attack_steps: int) -> float | None:
    """FLOPs of one train step. The profiler does not look inside the attack's
    while_loop, so one attack iteration (forward and input gradient) is counted
    separately and added ``attack_steps`` times."""
    outside_loop = graph_flops(trainer.train_step, batch)
    x, y, _ = batch

    def attack_iteration(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, trainer.classifier(x, training=False)))
        return tape.gradient(loss, x)

    iteration = graph_flops(attack_iteration, x, y)
    if outside_loop is None or iteration is None:
        return None
    return outside_loop + (attack_steps * iteration if not isinstance(trainer.attack, NoAttack) else 0.0)


def pin_threads(threads: int) -> None:
    """TensorFlow on ``threads`` intra-op threads, one op at a time (inter-op 1), as PyTorch runs."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def synthetic_batches(batch_size: int, shape, num_classes: int, autotune: bool = False):
    """One seeded (x, y, id) batch of uniform images, and a dataset repeating it.

    The dataset runs without tf.data's autotuning unless ``autotune``, as our
    training streams do (``without_autotuning``): destroying an iterator at the
    end of a ``fit`` call sometimes waits for the tuner's sleep to end, which
    added up to 2.3 s of idle time to a 2.8-second fit of one step."""
    rng = np.random.default_rng(0)
    batch = (tf.constant(rng.uniform(size=(batch_size, *shape)).astype(np.float32)),
             tf.constant((np.arange(batch_size) % num_classes).astype(np.int32)),
             tf.constant(np.arange(batch_size, dtype=np.int32)))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    return batch, dataset if autotune else without_autotuning(dataset)


class StepClock(keras.callbacks.Callback):
    """The time of each train step of a ``fit`` call, from the start of the step to
    its end (``on_train_batch_begin`` to ``on_train_batch_end``), by ``clock``
    (``time.perf_counter`` or ``time.process_time``). The fit call's own set-up
    and tear-down (making and destroying the dataset iterator, callbacks) stay
    out, as they do for a training run, which is one fit call for all epochs."""

    def __init__(self, clock=time.perf_counter):
        super().__init__()
        self.clock, self.seconds = clock, []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(self.clock() - self._start)


def make_trainer(method: str, arch: str, input_shape, num_classes: int, batch_size: int,
                 attack_steps: int, jit: bool, precision: str = "float32", batch_norm: str = "fused"):
    config = load_config(None, {"method": method, "model.arch": arch, "attack.steps": attack_steps,
                                "data.dataset": "synthetic", "epochs": 2, "precision": precision})
    labels = np.arange(batch_size) % num_classes
    classifier = build_model(arch, input_shape, num_classes, precision=precision)
    trainer = build_trainer(classifier, config, labels, num_classes)
    if batch_norm == "keras":
        restore_keras_batch_norm(classifier)
    trainer.compile(optimizer=make_optimizer(config, steps=1), jit_compile=jit)
    return trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--input-shape", default="32,32,3")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-norm", choices=["fused", "keras", "both"], default="fused",
                        help="fused: TensorFlow's fused kernels (what training uses); keras: Keras's own ops")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: images per second; cpu: images per CPU-second of this process, which other "
                             "load on the machine hardly changes (compare at equal --threads)")
    parser.add_argument("--threads", type=int,
                        help="TensorFlow's intra-op threads (inter-op 1) and torch's threads; default: each's own")
    parser.add_argument("--methods", default="standard,pgd-at,sglr,trades")
    parser.add_argument("--jit", choices=["off", "on", "both"], default="off")
    parser.add_argument("--precisions", default="float32",
                        help="comma-separated: float32, mixed_bfloat16, mixed_float16")
    parser.add_argument("--torch", action="store_true",
                        help="also time the PyTorch reference PGD-AT step (torch_step.py; needs the bench extra), one "
                             "process per repeat right after ours, and report ours / best PyTorch per precision, "
                             "overall and paired by repeat")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        pin_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    shape = tuple(int(d) for d in args.input_shape.split(","))
    batch, dataset = synthetic_batches(args.batch_size, shape, args.num_classes)
    jit_modes = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    methods = args.methods.split(",")

    peak = matmul_peak_gflops()
    precisions = args.precisions.split(",")
    trainers, flops = {}, {}
    batch_norms = ["fused", "keras"] if args.batch_norm == "both" else [args.batch_norm]
    for precision in precisions:
        for jit in jit_modes:
            for method, batch_norm in itertools.product(methods, batch_norms):
                key = f"{method}[{precision}{'+xla' if jit else ''}{'+keras_bn' if batch_norm == 'keras' else ''}]"
                trainers[key] = make_trainer(method, args.arch, shape, args.num_classes, args.batch_size,
                                             args.attack_steps, jit, precision, batch_norm)
                flops[key] = step_flops(trainers[key], batch, args.attack_steps) if precision == "float32" else None
                trainers[key].fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace, warm up
    seconds = {key: [] for key in trainers}
    torch_runs = []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every setting alike
        for key, trainer in trainers.items():
            steps = StepClock(clock)
            trainer.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False, callbacks=[steps])
            seconds[key].append(statistics.fmean(steps.seconds))
        if args.torch:  # PyTorch's repeat between ours, so it sees the same drift
            torch_runs.append(torch_reference(args, precisions))

    results = {}
    for key, samples in seconds.items():
        step = statistics.median(samples)
        results[key] = {"images_per_second": args.batch_size / step, "seconds_per_step": step,
                        "images_per_second_each_repeat": [args.batch_size / t for t in samples],
                        "gflop_per_step": flops[key] / 1e9 if flops[key] else None,
                        "achieved_gflops": flops[key] / step / 1e9 if flops[key] else None}
    report = {
        "arch": args.arch, "input_shape": list(shape), "batch_size": args.batch_size,
        "attack_steps": args.attack_steps, "timed_steps": args.steps, "repeats": args.repeats,
        "timing": "steps timed inside one fit call each repeat (fit set-up and tear-down excluded)",
        "clock": args.clock, "threads": args.threads, "batch_norm": args.batch_norm,
        "machine": {**machine(), "matmul_peak_gflops": peak},
        "methods": results, "ratios": {},
    }
    for precision in precisions:
        for jit in jit_modes:
            setting = f"{precision}{'+xla' if jit else ''}"
            sglr, pgd = results.get(f"sglr[{setting}]"), results.get(f"pgd-at[{setting}]")
            if sglr and pgd:
                report["ratios"][f"sglr_over_pgd_at[{setting}]"] = sglr["seconds_per_step"] / pgd["seconds_per_step"]
            for method in methods:
                fused, keras_bn = results.get(f"{method}[{setting}]"), results.get(f"{method}[{setting}+keras_bn]")
                if fused and keras_bn:
                    report["ratios"][f"fused_batch_norm_speedup[{method},{setting}]"] = (
                        keras_bn["seconds_per_step"] / fused["seconds_per_step"])
            base = results.get("pgd-at[float32]")
            if pgd and base and setting != "float32":
                report["ratios"][f"pgd_at_speedup[{setting}]"] = base["seconds_per_step"] / pgd["seconds_per_step"]
    if args.torch:
        report["torch"] = merge_torch_repeats(torch_runs)
        for precision in precisions:
            ours = results.get(f"pgd-at[{precision}]")
            torch_precision = TORCH_PRECISION.get(precision)
            theirs = [v for k, v in report["torch"]["results"].items() if k.startswith(f"{torch_precision}/")]
            if ours and theirs:
                best = max(v["images_per_second"] for v in theirs)
                report["ratios"][f"ours_over_best_torch[{precision}]"] = ours["images_per_second"] / best
                # Paired by repeat (PyTorch's ran right after ours): the spread of the ratio itself.
                best_each = [max(repeats) for repeats in zip(*(v["images_per_second_each_repeat"] for v in theirs))]
                report["ratios"][f"ours_over_best_torch_each_repeat[{precision}]"] = [
                    a / b for a, b in zip(ours["images_per_second_each_repeat"], best_each)]
    emit(report, args.out)


TORCH_PRECISION = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def merge_torch_repeats(runs: list[dict]) -> dict:
    """One report from torch_step.py runs of one repeat each: every setting's
    repeats in order, and their median."""
    merged = {key: value for key, value in runs[0].items() if key != "results"}
    merged["results"] = {}
    for setting in runs[0]["results"]:
        samples = [run["results"][setting]["images_per_second_each_repeat"][0] for run in runs]
        merged["results"][setting] = {"images_per_second": statistics.median(samples),
                                      "images_per_second_each_repeat": samples}
    merged["interleaved"] = "one PyTorch process per repeat, run right after our repeat"
    return merged


def torch_reference(args, precisions) -> dict:
    """torch_step.py in its own process (one repeat), same architecture, batch and budget."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    wanted = ",".join(TORCH_PRECISION[p] for p in precisions if p in TORCH_PRECISION)
    command = [sys.executable, str(Path(__file__).with_name("torch_step.py")), "--arch", args.arch,
               "--input-shape", args.input_shape, "--num-classes", str(args.num_classes),
               "--batch-size", str(args.batch_size), "--attack-steps", str(args.attack_steps),
               "--steps", str(args.steps), "--repeats", "1", "--precisions", wanted,
               "--clock", args.clock] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"torch_step.py failed (is torch installed? pip install -e '.[bench]'): "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
