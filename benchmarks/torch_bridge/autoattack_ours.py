"""Our AutoAttack (standard) on the points stored in `export_graph.py` files, in the
same JSON form as `autoattack_torch.py`, so the two compare point by point on the
same weights and points:

    python benchmarks/torch_bridge/autoattack_ours.py runs/x/last.keras aa/x__last.npz --eps 0.1 --out ours.json
    python benchmarks/torch_bridge/compare.py ours.json torch.json

The first call traces every attack on 8 points first, so the timing is of the
attack, not of TensorFlow's tracing (the PyTorch side has none to pay).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the .keras classifier the .npz was exported from")
    parser.add_argument("points", help="the .npz from export_graph.py")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--n-examples", type=int, help="the first N stored points (default: all)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-norm", choices=["fused", "keras"], default="fused",
                        help="fused: TensorFlow's fused kernels (what sglr eval uses); keras: Keras's own ops")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import tensorflow as tf

    from sglr_keras.attacks.autoattack import AutoAttack
    from sglr_keras.checkpoints import load_classifier
    from sglr_keras.evaluation import ModelRunner

    with np.load(args.points) as data:
        n = args.n_examples or len(data["y"])
        x, y, stored = data["x"][:n], data["y"][:n].astype(np.int32), data["logits"][:n]
        indices = data["indices"][:n].tolist() if "indices" in data else None
    model = load_classifier(args.checkpoint)
    if args.batch_norm == "keras":
        from sglr_keras.models.fused_batchnorm import restore_keras_batch_norm

        restore_keras_batch_norm(model)
    runner = ModelRunner(model, args.batch_size)
    if np.abs(runner.logits(x) - stored).max() > 1e-4:
        raise SystemExit(f"{args.points} was not exported from {args.checkpoint}")
    correct = runner.correct(x, y)
    keras.utils.set_random_seed(args.seed)
    suite = AutoAttack(args.eps, seed=args.seed)
    suite.run(runner, x[:8], y[:8], correct[:8])  # trace every member
    start, cpu_start = time.perf_counter(), time.process_time()
    stages = suite.run(runner, x, y, correct)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    robust = stages[-1].robust_mask
    result = {"clean_accuracy": float(correct.mean()), "robust_accuracy": float(robust.mean()), "seconds": seconds,
              "points_per_second": n / seconds, "cpu_seconds": cpu_seconds,
              "batch_norm": args.batch_norm, "n_examples": n, "robust": robust.astype(int).tolist(),
              "stages": [{"attack": stage.name, "seconds": stage.seconds, "robust_accuracy": stage.robust_accuracy}
                         for stage in stages]}
    if indices is not None:  # lets aa_report.py match the points to the run's final evaluation exactly
        result["test_indices"] = indices
    report = {"machine": {"device": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "tensorflow": tf.__version__},
              "suite": "ours-standard", "eps": args.eps, "models": {Path(args.points).stem: result}}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{Path(args.points).stem}: clean {100 * result['clean_accuracy']:.1f}  AA {100 * result['robust_accuracy']:.1f}"
          f"  {result['points_per_second']:.3f} points/s")


if __name__ == "__main__":
    main()
