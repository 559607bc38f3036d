"""A tf.data pipeline with augmentation, trained under MirroredStrategy, with
Keras's BackupAndRestore: stop it (Ctrl-C, a crash, a preempted machine) and run
the same command again to resume from the last finished epoch.

On one machine with several GPUs MirroredStrategy uses them all; on a CPU this
script splits the CPU into two logical devices, so the same code path runs.

    python examples/tf_data_mirrored.py --backup-dir /tmp/sglr-backup
    python examples/tf_data_mirrored.py --backup-dir /tmp/sglr-backup --tiny
"""

import argparse

import tensorflow as tf

# Two logical CPU devices must be set up before TensorFlow touches a device.
if not tf.config.list_physical_devices("GPU"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import sglr_keras as sk  # noqa: E402


# Keras preprocessing layers work inside tf.data (built once, outside the map).
translate = keras.layers.RandomTranslation(0.1, 0.1, seed=0)


def augment(image, label, example_id):
    return translate(image), label, example_id  # the id passes through untouched


def main(backup_dir: str, tiny: bool, stop_after: int | None = None) -> dict:
    keras.utils.set_random_seed(0)
    bundle = sk.load_dataset("digits", train_subset=128 if tiny else None)
    x, y = bundle.x_train.astype("float32") / 255.0, bundle.y_train

    # Ids first (stable positions), then shuffle, augment and batch.
    dataset = sk.with_example_ids(tf.data.Dataset.from_tensor_slices((x, y)))
    dataset = dataset.shuffle(len(y), seed=0).map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(64)

    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = sk.build_model("small_cnn", bundle.input_shape, bundle.num_classes, width=0.25 if tiny else 1.0)
        trainer = sk.AdversarialTrainer(
            model, attack=sk.TrainingPGD(eps=0.1, step_size=0.025, steps=2 if tiny else 10),
            objective=sk.SGLR.from_preset("reference-code", bundle.num_classes, y, warmup_epochs=1),
            weight_decay=5e-4)
        steps = -(-len(y) // 64)
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([10 * steps], [0.05, 0.005])
        trainer.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))

    x_val, y_val = bundle.test_subset(64)
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir),
                 sk.RobustValidation(x_val, y_val, sk.PGD(eps=0.1, step_size=0.025, steps=5))]
    if stop_after is not None:
        callbacks.append(StopAfter(stop_after))
    history = trainer.fit(dataset, epochs=3 if tiny else 20, callbacks=callbacks, verbose=0 if tiny else "auto")
    print({key: [round(v, 3) for v in values] for key, values in history.history.items()})
    return history.history


class StopAfter(keras.callbacks.Callback):
    """Simulates a preempted machine: the process dies after ``epochs`` epochs."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise SystemExit(3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backup-dir", required=True, help="where BackupAndRestore keeps the latest state")
    parser.add_argument("--tiny", action="store_true", help="seconds, on tiny data (the test suite's run)")
    parser.add_argument("--stop-after", type=int, help="end the process after this many epochs (to try a resume)")
    args = parser.parse_args()
    main(args.backup_dir, args.tiny, args.stop_after)
