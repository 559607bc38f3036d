"""tf.data input pipelines.

The training stream is a pure function of (seed, epoch, example index): epoch
``e`` visits the examples in a permutation seeded by ``(seed, e)`` and augments
example ``i`` with randomness seeded by ``(seed, e, i)``. A run resumed at epoch
``e`` therefore sees exactly the batches an uninterrupted run would, and two
replica layouts see the same global batches. Keras's preprocessing layers keep
their own RNG state, which is not a function of (epoch, index); that is why the
crop and flip here use TensorFlow's stateless image ops.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from sglr_keras.data import DatasetBundle
from sglr_keras.data.example_ids import without_autotuning


def crop_padding(image_size: int) -> int:
    """4 pixels for 32x32 (the CIFAR protocol), scaled for other sizes."""
    return max(1, round(image_size / 8))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def train_dataset(
    bundle: DatasetBundle,
    batch_size: int,
    seed: int,
    epochs: int,
    initial_epoch: int = 0,
    augment: bool = True,
) -> tf.data.Dataset:
    """Batches ``(images float32 [0,1], labels int32, indices int32)`` for epochs
    ``initial_epoch .. epochs-1``, one epoch after the other."""
    images = tf.constant(bundle.x_train)
    labels = tf.constant(bundle.y_train.astype(np.int32))
    num_examples = bundle.num_train
    height, width, _ = bundle.input_shape
    pad = crop_padding(height)
    flip = bundle.flip_safe

    def load(index, epoch):
        image = tf.image.convert_image_dtype(tf.gather(images, index), tf.float32)
        if augment:
            example_seed = tf.stack([tf.cast(seed, tf.int64) * 100_003 + epoch, tf.cast(index, tf.int64)])
            padded = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
            image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=example_seed)
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=example_seed + 1)
        return image, tf.gather(labels, index), index

    def epoch_batches(epoch):
        keys = tf.random.stateless_uniform([num_examples], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        order = tf.cast(tf.argsort(keys), tf.int32)
        examples = tf.data.Dataset.from_tensor_slices(order).map(
            lambda index: load(index, epoch), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return examples.batch(batch_size)

    stream = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch_batches)
    # Across workers, split every global batch (not whole batches or files).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return without_autotuning(stream.with_options(options).prefetch(tf.data.AUTOTUNE))


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Fixed-order batches of float images and int labels."""
    return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(batch_size).prefetch(tf.data.AUTOTUNE)
