"""How long each epoch of ``AdversarialTrainer.fit(x, y)`` waits before its first
step (``on_epoch_begin`` to the first ``on_train_batch_begin``), and how long the
epochs take: a new dataset iterator is made every epoch, and destroying the old
one can wait for tf.data's autotuning thread (``--autotune`` turns autotuning
back on, as it was before ``without_autotuning``):

    python benchmarks/epoch_starts.py --epochs 10
    python benchmarks/epoch_starts.py --epochs 10 --autotune
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sglr_keras.data.example_ids as example_ids  # noqa: E402
from sglr_keras import SGLR, AdversarialTrainer, TrainingPGD  # noqa: E402
from sglr_keras.models import build_model  # noqa: E402


class EpochStarts(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.waits, self.epochs = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._begin = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.waits.append(time.perf_counter() - self._begin)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self._begin)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--autotune", action="store_true", help="leave tf.data's autotuning on")
    args = parser.parse_args()
    if args.autotune:
        example_ids.without_autotuning = lambda dataset: dataset
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.examples, 32, 32, 3)).astype("float32")
    y = np.arange(args.examples) % 10
    trainer = AdversarialTrainer(build_model("small_cnn", (32, 32, 3), 10),
                                 attack=TrainingPGD(eps=8 / 255, step_size=2 / 255, steps=5),
                                 objective=SGLR(10, y, warmup_epochs=1))
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    clock = EpochStarts()
    trainer.fit(x, y, batch_size=64, epochs=args.epochs, verbose=0, callbacks=[clock])
    print("autotune:", "on" if args.autotune else "off")
    print("wait before the first step, s:", " ".join(f"{w:.2f}" for w in clock.waits))
    print("epoch, s:", " ".join(f"{e:.2f}" for e in clock.epochs))


if __name__ == "__main__":
    main()
