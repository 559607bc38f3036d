"""Time each attack on one model and one set of test points, in one run.

Prints JSON: for every attack, the seconds it took, the points it attacked (the
correctly classified ones, as in evaluation), points attacked per second, and
the robust accuracy it left. Attacks that stop early on fooled points (APGD,
FAB, Square) run faster on weak models, so time a trained model:

    python benchmarks/attacks.py --checkpoint runs/fm/best.keras --n-examples 500
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from bench_io import emit, machine  # noqa: E402

from sglr_keras import checkpoints  # noqa: E402
from sglr_keras.attacks.autoattack import AutoAttack  # noqa: E402
from sglr_keras.data import load_dataset  # noqa: E402
from sglr_keras.evaluation import ModelRunner, build_attack  # noqa: E402

DEFAULT_ATTACKS = "fgsm,pgd,cw,apgd-ce,apgd-t,fab-t,square,autoattack"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a .keras classifier or exported SavedModel")
    parser.add_argument("--dataset", help="default: the one the run trained on")
    parser.add_argument("--n-examples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--eps", type=float, help="default: the run's training eps")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    run = checkpoints.run_info_for(args.checkpoint)
    dataset = args.dataset or run["run"]["dataset"]
    eps = args.eps if args.eps is not None else run["config"]["attack"]["eps"]
    model = checkpoints.load_classifier(args.checkpoint)
    x, y = load_dataset(dataset).test_subset(args.n_examples, 0)
    runner = ModelRunner(model, args.batch_size)
    correct = runner.correct(x, y)

    results = {}
    for name in args.attacks.split(","):
        keras.utils.set_random_seed(0)
        if name == "autoattack":
            suite = AutoAttack(eps)
            suite.run(runner, x[:8], y[:8], correct[:8])  # trace every member
            start = time.perf_counter()
            stages = suite.run(runner, x, y, correct)
            seconds, robust = time.perf_counter() - start, float(stages[-1].robust_mask.mean())
        else:
            attack = build_attack(name, eps)
            runner.attack(attack, x[:8], y[:8], correct[:8])  # trace
            start = time.perf_counter()
            robust = runner.attack(attack, x, y, correct).robust_accuracy
            seconds = time.perf_counter() - start
        attacked = int(correct.sum())
        results[name] = {"seconds": seconds, "points_attacked": attacked,
                         "points_per_second": attacked / seconds, "robust_accuracy": robust}
        print(f"{name}: {attacked / seconds:.1f} points/s, robust {robust:.3f}", flush=True)

    report = {"checkpoint": args.checkpoint, "dataset": dataset, "eps": eps, "n_examples": len(y),
              "batch_size": args.batch_size, "clean_accuracy": float(correct.mean()),
              "machine": machine(), "attacks": results}
    emit(report, args.out)


if __name__ == "__main__":
    main()
