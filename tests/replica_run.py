"""Run one epoch of SGLR twice in one fresh process: on 2 mirrored CPU replicas,
then on the default strategy with the same global batch. Writes the final tables,
weights and the largest difference seen between the replicas' table copies after
any step to OUT/result.npz. Used by test_distribute.py."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sglr_keras.config import load_config  # noqa: E402
from sglr_keras.training.run import train  # noqa: E402


class Capture(keras.callbacks.Callback):
    def __init__(self, check_replicas):
        super().__init__()
        self.check_replicas = check_replicas
        self.replica_gap = 0.0
        self.steps_checked = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.check_replicas:
            copies = [np.asarray(v) for v in self.model.soft_label_table.rows.value.values]
            self.replica_gap = max(self.replica_gap, float(np.abs(copies[0] - copies[1]).max()))
            self.steps_checked += 1

    def on_train_end(self, logs=None):
        self.table = self.model.soft_label_table.numpy_rows()
        self.weights = [np.asarray(w) for w in self.model.classifier.get_weights()]


def run(out, replicas):
    config = load_config(None, {
        "method": "sglr", "epochs": 1, "batch_size": 64, "seed": 0, "data.dataset": "synthetic",
        "data.train_subset": 128, "data.augment": False, "model.arch": "small_cnn", "model.width": 0.5,
        "model.sync_batchnorm": True,
        "attack.steps": 2, "optimizer.lr": 0.05, "sglr.alpha": 0.5, "evaluation.n_test": 32,
        "evaluation.n_train": 0, "cpu_replicas": replicas, "strategy": "mirrored" if replicas > 1 else "default",
    })
    capture = Capture(check_replicas=replicas > 1)
    train(config, os.path.join(out, f"run{replicas}"), show_progress=False, extra_callbacks=[capture])
    return capture


if __name__ == "__main__":
    out = sys.argv[1]
    mirrored = run(out, 2)
    single = run(out, 1)
    np.savez(os.path.join(out, "result.npz"), table_2=mirrored.table, table_1=single.table,
             replica_gap=mirrored.replica_gap, steps_checked=mirrored.steps_checked,
             **{f"w2_{i}": w for i, w in enumerate(mirrored.weights)},
             **{f"w1_{i}": w for i, w in enumerate(single.weights)})
