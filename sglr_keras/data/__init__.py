"""Data sets by name, from TFDS or from files a user already has.

``load_dataset`` returns a :class:`DatasetBundle` of uint8 images in memory.
Training example ``i`` of the bundle carries the stable index ``i``; the
soft-label table has one row per index.

Names: ``cifar10``, ``cifar100``, ``svhn``, ``fashion_mnist``, ``mnist`` (TFDS, or
a local folder through ``data_dir``), ``digits`` (scikit-learn's bundled 8x8
digits, the offline default), ``synthetic`` (tests), ``npz:PATH``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sglr_keras.data import sources
from sglr_keras.errors import UserError

TFDS_NAMES = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhn": "svhn_cropped",
    "fashion_mnist": "fashion_mnist",
    "mnist": "mnist",
}
LOCAL_NAMES = ("digits", "synthetic")
DATASET_NAMES = (*TFDS_NAMES, *LOCAL_NAMES)
# What a named data set holds: (classes, image shape). Data loaded under a name
# is checked against it, so a CIFAR-10 folder is never trained as "cifar100".
EXPECTED = {"cifar10": (10, (32, 32, 3)), "cifar100": (100, (32, 32, 3)), "svhn": (10, (32, 32, 3)),
            "fashion_mnist": (10, (28, 28, 1)), "mnist": (10, (28, 28, 1))}
# Mean training pixel (in [0, 1]) of the two idx-format data sets, which share file names.
IDX_MEAN_PIXEL = {"mnist": 0.13, "fashion_mnist": 0.29}
# Horizontal flips change the meaning of digits and house numbers.
FLIP_SAFE = {"cifar10", "cifar100", "fashion_mnist"}


@dataclass
class DatasetBundle:
    name: str
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    # Fraction of training labels that differ from the data set's own (label noise).
    wrong_label_fraction: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def flip_safe(self) -> bool:
        return self.name in FLIP_SAFE

    def test_subset(self, n: int, seed: int = 0, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A fixed, seeded subset of the test set as float32 in [0, 1].

        ``skip`` leaves out the first ``skip`` examples of the same seeded order,
        so ``test_subset(n, seed, skip=m)`` is disjoint from ``test_subset(m, seed)``
        (e.g. from the points that picked the best checkpoint)."""
        return self.test_points(seeded_indices(len(self.y_test), n, seed, skip))

    def train_subset(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return _as_points(self.x_train, self.y_train, self.train_indices(n, seed))

    def train_indices(self, n: int, seed: int = 0) -> np.ndarray:
        """Sorted indices of ``n`` seeded training examples (those of ``train_subset``)."""
        return seeded_indices(self.num_train, n, seed)

    def test_indices(self, n: int, seed: int = 0, exclude=()) -> np.ndarray:
        """Sorted indices of ``n`` seeded test points, none of them in ``exclude``."""
        return seeded_indices(len(self.y_test), n, seed, exclude=exclude)

    def test_points(self, indices) -> tuple[np.ndarray, np.ndarray]:
        return _as_points(self.x_test, self.y_test, indices)


def seeded_indices(size: int, n: int, seed: int, skip: int = 0, exclude=()) -> np.ndarray:
    """Sorted indices of ``n`` of ``range(size)``: a seeded order with ``exclude``
    removed, from position ``skip`` on. The same (size, seed) always gives the same order."""
    order = np.random.default_rng(seed).permutation(size)
    if len(exclude):
        order = order[~np.isin(order, np.asarray(exclude, dtype=np.int64))]
    return np.sort(order[skip:skip + n])


def _as_points(x, y, indices) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1] and int32 labels at ``indices``."""
    indices = np.asarray(indices, dtype=np.int64)
    return x[indices].astype(np.float32) / 255.0, y[indices].astype(np.int32)


def validate_dataset_name(name: str) -> None:
    if name.startswith("npz:"):
        return
    if name not in DATASET_NAMES:
        raise UserError(
            f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)} or npz:PATH"
        )


def load_dataset(
    name: str,
    data_dir: str | None = None,
    train_subset: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    label_noise_mode: str = "flip",
) -> DatasetBundle:
    """Load data set ``name``; see the module docstring for the sources.
    ``train_subset`` keeps a seeded class-balanced subset, ``label_noise`` redraws
    or flips that fraction of the training labels (seeded).

    >>> bundle = load_dataset("digits", train_subset=100)
    >>> (bundle.num_train, bundle.num_classes, bundle.input_shape)
    (100, 10, (8, 8, 1))
    """
    validate_dataset_name(name)
    arrays = _read(name, data_dir)
    x_train, y_train, x_test, y_test, class_names = arrays
    _check_splits(name, x_train, y_train, x_test, y_test)
    _check_labels(name, y_train, y_test, len(class_names))
    check_contents(name, x_train, y_train, class_names)
    if train_subset is not None:
        keep = balanced_subset(y_train, train_subset, seed)
        x_train, y_train = x_train[keep], y_train[keep]
    wrong = 0.0
    if label_noise > 0:
        noisy = symmetric_label_noise(y_train, label_noise, len(class_names), seed, label_noise_mode)
        wrong = float(np.mean(noisy != y_train)) if len(y_train) else 0.0
        y_train = noisy
    return DatasetBundle(name.split(":")[0] if name.startswith("npz:") else name,
                         x_train, y_train, x_test, y_test, list(class_names), wrong)


def _read(name: str, data_dir: str | None) -> sources.Arrays:
    if name.startswith("npz:"):
        return sources.read_npz(Path(name[4:]))
    if name in LOCAL_NAMES and data_dir is not None:
        origin = "bundled with scikit-learn" if name == "digits" else "made in memory"
        raise UserError(f"--data-dir is not used by '{name}' ({origin}); drop --data-dir, or name the data set "
                        "the folder holds")
    if name == "digits":
        return sources.read_digits()
    if name == "synthetic":
        return sources.make_synthetic()
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise UserError(f"data folder '{folder}' does not exist; pass an existing folder to --data-dir")
        if sources.looks_like_idx_folder(folder):
            arrays = sources.read_idx_folder(folder)
            _check_idx_kind(name, folder, arrays[0])
            return arrays
        if sources.has_cifar_files(folder):
            return sources.read_cifar_folder(folder)
        return sources.read_tfds(TFDS_NAMES[name], str(folder))
    system_dir = sources.SYSTEM_IDX_DIRS.get(name)
    if system_dir is not None and sources.looks_like_idx_folder(system_dir) and not _tfds_prepared(name):
        return sources.read_idx_folder(system_dir)
    return sources.read_tfds(TFDS_NAMES[name], None)


def _tfds_prepared(name: str) -> bool:
    """Whether TFDS data for ``name`` is prepared in the default TFDS folder
    (checked on disk: asking a TFDS builder can create folders as a side effect)."""
    root = Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))
    return any((root / TFDS_NAMES[name]).glob("*/dataset_info.json"))


def _check_idx_kind(name: str, folder: Path, x_train: np.ndarray) -> None:
    """MNIST and Fashion-MNIST share file names and shapes; their brightness tells
    them apart (checked on real-sized data only)."""
    if name not in IDX_MEAN_PIXEL or len(x_train) < 1000:
        return
    mean = float(x_train.mean()) / 255.0
    looks = min(IDX_MEAN_PIXEL, key=lambda kind: abs(IDX_MEAN_PIXEL[kind] - mean))
    if looks != name:
        raise UserError(f"--data-dir '{folder}' looks like {looks}, not {name} (mean pixel {mean:.2f}; MNIST's is "
                        f"{IDX_MEAN_PIXEL['mnist']}, Fashion-MNIST's {IDX_MEAN_PIXEL['fashion_mnist']}); pass "
                        f"--dataset {looks} or the {name} folder")


def check_contents(name: str, x_train: np.ndarray, y_train: np.ndarray, class_names) -> None:
    """What was loaded is what was asked for, and can train a classifier: the
    named data set's class count and image shape; images of at least 1x1 pixel;
    at least two classes among the training labels."""
    shape = tuple(int(d) for d in x_train.shape[1:])
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"data set '{name}': images are {'x'.join(map(str, shape))}; they need a height, width "
                        "and channels of at least 1")
    if name in EXPECTED:
        classes, expected_shape = EXPECTED[name]
        if len(class_names) != classes or shape != expected_shape:
            raise UserError(f"data set '{name}' should hold {classes} classes of {expected_shape} images, but what "
                            f"was loaded holds {len(class_names)} classes of {shape}; pass the {name} files, or "
                            "the --dataset name of what the folder holds")
    present = np.unique(y_train)
    if len(present) < 2:
        raise UserError(f"data set '{name}': the training labels hold {len(present)} class"
                        f"{'' if len(present) == 1 else 'es'} ({', '.join(map(str, present))}); a classifier needs "
                        "at least 2")


def _check_splits(name, x_train, y_train, x_test, y_test) -> None:
    """One image per label, no empty split, the same image shape in both splits."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise UserError(f"data set '{name}': {len(x)} {split} images but {len(y)} labels; "
                            "every image needs exactly one label")
        if len(y) == 0:
            raise UserError(f"data set '{name}': the {split} split is empty; it needs at least one example")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"data set '{name}': train images are {x_train.shape[1:]} but test images are "
                        f"{x_test.shape[1:]}; both splits need the same image shape")


def _check_labels(name, y_train, y_test, num_classes) -> None:
    for split, labels in (("train", y_train), ("test", y_test)):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(
                f"data set '{name}': {split} labels span [{labels.min()}, {labels.max()}] but there are "
                f"{num_classes} classes; labels must be 0..{num_classes - 1}"
            )


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded subset with (as nearly as possible) equal counts per class."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    quota = {c: n // len(classes) for c in classes}
    for c in rng.permutation(classes)[: n - sum(quota.values())]:
        quota[c] += 1
    # A class smaller than its quota gives its remainder to the others.
    chosen = []
    for c in classes:
        chosen.extend(per_class[c][: quota[c]])
    if len(chosen) < n:
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen.extend(rng.permutation(rest)[: n - len(chosen)])
    return np.sort(np.asarray(chosen))


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int,
                          mode: str = "flip") -> np.ndarray:
    """Symmetric label noise on seeded examples.

    ``flip``: exactly round(rate * N) examples get another class. ``redraw`` (the
    SGLR reference code's convention): int(rate * N) examples get a label drawn
    uniformly from all C classes, so about 1/C of them keep their true label.
    """
    rng = np.random.default_rng(seed + 7919)
    noisy = labels.copy()
    if mode == "redraw":
        chosen = rng.permutation(len(labels))[: int(rate * len(labels))]
        noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
        return noisy
    if mode != "flip":
        raise ValueError(f"label noise mode must be flip or redraw, got {mode!r}")
    flip = rng.permutation(len(labels))[: int(round(rate * len(labels)))]
    shift = rng.integers(1, num_classes, size=len(flip))
    noisy[flip] = (labels[flip] + shift) % num_classes
    return noisy
