import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from sglr_keras.data import balanced_subset, load_dataset, symmetric_label_noise
from sglr_keras.data.pipeline import steps_per_epoch, train_dataset
from sglr_keras.errors import UserError


def _epoch_indices(bundle, epoch, seed=0, batch_size=100):
    stream = train_dataset(bundle, batch_size, seed, epochs=epoch + 1, initial_epoch=epoch)
    return np.concatenate([idx.numpy() for _, _, idx in stream])


def test_indices_are_unique_stable_and_reshuffled_per_epoch():
    bundle = load_dataset("synthetic")
    first = _epoch_indices(bundle, 0)
    assert sorted(first) == list(range(bundle.num_train))  # every example exactly once
    assert np.array_equal(first, _epoch_indices(bundle, 0))  # same seed, same epoch: same order
    assert not np.array_equal(first, _epoch_indices(bundle, 1))  # a new permutation next epoch


def test_stream_resumes_with_the_same_batches():
    bundle = load_dataset("synthetic")
    full = list(train_dataset(bundle, 128, seed=3, epochs=3))
    resumed = list(train_dataset(bundle, 128, seed=3, epochs=3, initial_epoch=2))
    per_epoch = steps_per_epoch(bundle.num_train, 128)
    assert len(full) == 3 * per_epoch and len(resumed) == per_epoch
    for (xa, ya, ia), (xb, yb, ib) in zip(full[2 * per_epoch:], resumed):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(xa, xb)  # the augmentation is replayed too


def test_labels_follow_their_images():
    bundle = load_dataset("synthetic")
    for x, y, idx in train_dataset(bundle, 64, 0, epochs=1, augment=False):
        np.testing.assert_array_equal(y.numpy(), bundle.y_train[idx.numpy()])
        np.testing.assert_allclose(x.numpy(), bundle.x_train[idx.numpy()] / 255.0, atol=1e-6)


def test_our_training_streams_run_without_tf_data_autotuning():
    """Autotuning's thread can hold up an iterator's destruction for up to a
    minute (see ``without_autotuning``); our in-memory streams turn it off, and
    keep their sharding option and their length."""
    import tensorflow as tf

    from sglr_keras.data.example_ids import epoch_shuffled_batches

    bundle = load_dataset("synthetic")
    stream = train_dataset(bundle, 64, 0, epochs=1)
    assert stream.options().autotune.enabled is False
    assert stream.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    batches = epoch_shuffled_batches(bundle.x_train[:100], bundle.y_train[:100], 32, seed=0,
                                     epoch=tf.Variable(0, dtype=tf.int64))
    assert batches.options().autotune.enabled is False
    assert int(batches.cardinality()) == 4


def _write_cifar10(folder, n_per_batch=4):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)


def test_cifar10_folder_reader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    bundle = load_dataset("cifar10", data_dir=str(tmp_path))
    assert bundle.x_train.shape == (20, 32, 32, 3) and bundle.x_test.shape == (4, 32, 32, 3)
    assert bundle.class_names[3] == "c3"
    with open(folder / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle)
    # Row layout is channel-first: the first 1024 bytes are the red plane.
    np.testing.assert_array_equal(bundle.x_train[0, :, :, 0].ravel(), raw[b"data"][0, :1024])


def test_cifar100_folder_reader(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(rng.integers(0, 100, n))}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, handle)
    bundle = load_dataset("cifar100", data_dir=str(folder))
    assert bundle.num_classes == 100 and bundle.num_train == 6


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": _Evil(), b"labels": []}, handle)
    with pytest.raises(UserError, match="cannot read CIFAR file"):
        load_dataset("cifar10", data_dir=str(folder))


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader(tmp_path, compress):
    suffix = ".gz" if compress else ""
    images = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(5), compress)
    bundle = load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert bundle.input_shape == (28, 28, 1)
    np.testing.assert_array_equal(bundle.x_train[..., 0], images)


def test_truncated_idx_is_refused(tmp_path):
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((5, 28, 28)), False)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.zeros(5), False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_npz_source_and_label_range(tmp_path):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).uniform(size=(10, 8, 8)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(10) % 3, x_test=x[:4], y_test=np.arange(4) % 3)
    bundle = load_dataset(f"npz:{path}")
    assert bundle.input_shape == (8, 8, 1) and bundle.num_classes == 3
    np.savez(path, x_train=x * 3, y_train=np.arange(10) % 3, x_test=x[:4], y_test=np.arange(4) % 3)
    with pytest.raises(UserError, match="must be in \\[0, 1\\]"):
        load_dataset(f"npz:{path}")


def test_missing_data_folder():
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("cifar10", data_dir="/nonexistent/folder")


def test_balanced_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    subset = balanced_subset(labels, 250, seed=1)
    counts = np.bincount(labels[subset], minlength=10)
    assert len(subset) == 250 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(subset, balanced_subset(labels, 250, seed=1))


def test_label_noise_flips_exactly_the_requested_fraction():
    labels = np.repeat(np.arange(10), 100)
    noisy = symmetric_label_noise(labels, 0.4, 10, seed=0)
    assert (noisy != labels).sum() == 400
    assert noisy.min() >= 0 and noisy.max() < 10


def test_digits_is_the_offline_default():
    bundle = load_dataset("digits")
    assert bundle.input_shape == (8, 8, 1) and bundle.num_classes == 10
    assert bundle.num_train + len(bundle.y_test) == 1797
