"""Square Attack's model calls: through ``tf.function`` (signature matching on
every query, as before) against the traced graph called directly (as now), on
the same checkpoint and points, interleaved; prints seconds per run and whether
the adversarial images are identical:

    python benchmarks/square_dispatch.py runs/x/last.keras aa/x__last.npz --n-examples 20 --queries 1000
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sglr_keras.attacks.square import Square, _margins_of  # noqa: E402
from sglr_keras.models.fused_batchnorm import use_fused_batch_norm  # noqa: E402


class PolymorphicSquare(Square):
    """Square with each query's model call going through ``tf.function``'s dispatch."""

    def _margin_fn(self, model, shape):
        return _margins_of(self.predictor(model))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("points", help="an .npz with x and y (export_graph.py writes one)")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--n-examples", type=int, default=20)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = keras.models.load_model(args.checkpoint, compile=False)
    use_fused_batch_norm(model)
    points = np.load(args.points)
    x, y = points["x"][:args.n_examples], points["y"][:args.n_examples]
    seconds, images = {"tf.function": [], "traced graph": []}, {"tf.function": [], "traced graph": []}
    for _ in range(args.repeats):
        for name, attack in (("tf.function", PolymorphicSquare), ("traced graph", Square)):
            start = time.perf_counter()
            images[name].append(np.asarray(attack(args.eps, n_queries=args.queries, seed=0).perturb(model, x, y)))
            seconds[name].append(time.perf_counter() - start)
    for name, times in seconds.items():
        print(f"{name}: " + ", ".join(f"{t:.2f} s" for t in times))
    same = all(np.array_equal(a, b) for a, b in zip(images["tf.function"], images["traced graph"]))
    print(f"identical adversarial images: {same}")


if __name__ == "__main__":
    main()
