"""Stable example ids for a user's own data.

SGLR keeps one soft-label row per training example, so every training batch
carries, beside its images and labels, the id (row) of each example. An id must
name the same example in every epoch: ids are attached to the data in its
stored order, before any shuffling or batching.

    import tensorflow as tf
    from sglr_keras import with_example_ids

    ds = with_example_ids(tf.data.Dataset.from_tensor_slices((x_train, y_train)))
    ds = ds.shuffle(1024).map(augment).batch(128)   # elements (x, y, id)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# tf.data transformations that make the position of an element differ between
# epochs (or group elements): ids attached after them would not be stable.
_UNSTABLE = ("Shuffle", "Batch", "Interleave", "Window", "Rejection", "Sample", "Choose", "Bucket")


def _lineage(dataset: tf.data.Dataset):
    """The dataset and every dataset it is built from."""
    stack, seen = [dataset], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        try:
            stack.extend(current._inputs())  # tf.data's own record of a dataset's inputs
        except (AttributeError, NotImplementedError):
            pass


def unstable_step(dataset: tf.data.Dataset) -> str | None:
    """The name of the first transformation that reorders or groups elements, if any."""
    for part in _lineage(dataset):
        name = type(part).__name__
        if any(marker in name for marker in _UNSTABLE):
            return name.strip("_")
    return None


def with_example_ids(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` of ``(x, y)`` as ``(x, y, id)``, where ``id`` is the element's
    position in ``dataset`` (an int32 scalar), for SGLR's soft-label table.

    Refuses a dataset that is already shuffled, batched or interleaved: ids
    attached there would name other examples in the next epoch. Shuffle,
    augment and batch after attaching them.

    >>> import numpy as np, tensorflow as tf
    >>> ds = with_example_ids(tf.data.Dataset.from_tensor_slices((np.zeros((3, 8, 8, 1)), [0, 1, 2])))
    >>> [int(i) for _, _, i in ds]
    [0, 1, 2]
    """
    step = unstable_step(dataset)
    if step is not None:
        raise ValueError(f"with_example_ids: the dataset is already transformed by {step}, so an element's "
                         "position is not the same example every epoch; attach ids to the unshuffled, unbatched "
                         "(x, y) dataset first, then shuffle, augment and batch")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(f"with_example_ids: elements must be (x, y) pairs, got {spec}")
    return dataset.enumerate().map(lambda i, xy: (xy[0], xy[1], tf.cast(i, tf.int32)),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuning off: ``AUTOTUNE`` map parallelism
    becomes one call per CPU thread and nothing retunes it while it runs.

    Our in-memory pipelines (index, gather, crop, flip) need no tuning. The
    tuner would cost time: its thread sleeps in periods that double from 10 ms up
    to a minute, and destroying an iterator (Keras makes a new one every epoch of
    a dataset of known length) sometimes waits for the current period to end
    (seen with gdb: ``RootDataset::Iterator::~Iterator`` waiting on
    ``Model::OptimizeLoop``). In a small run that wait took 1.1-1.3 s at the
    start of 5 of 9 epochs of about 4 s (``benchmarks/epoch_starts.py``)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def epoch_shuffled_batches(x, y, batch_size: int, seed: int, epoch: tf.Variable, shuffle: bool = True):
    """Batches ``(x, y, id)`` of in-memory arrays; the order of an epoch is a pure
    function of (seed, ``epoch``'s value when the epoch starts), so a run resumed
    by ``BackupAndRestore`` sees the batches an uninterrupted one would."""
    x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32) if not tf.is_tensor(x) else x)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    count = int(x.shape[0])

    def order(_):
        if not shuffle:
            return tf.data.Dataset.range(count)
        keys = tf.random.stateless_uniform([count], seed=tf.stack([tf.constant(seed, tf.int64), epoch.read_value()]))
        return tf.data.Dataset.from_tensor_slices(tf.cast(tf.argsort(keys), tf.int64))

    examples = tf.data.Dataset.from_tensors(0).flat_map(order)
    batches = examples.map(lambda i: (tf.gather(x, i), tf.gather(y, i), tf.cast(i, tf.int32)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    # flat_map hides the length; Keras wants it to count an epoch's steps.
    return without_autotuning(batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size))))
