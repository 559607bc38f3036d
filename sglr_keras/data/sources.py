"""Readers that turn data a user has into uint8 NHWC arrays.

Each reader returns ``(x_train, y_train, x_test, y_test, class_names)`` with
images as uint8 (N, H, W, C) and labels as int64 (N,).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from sglr_keras.errors import UserError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Where Debian's dataset-fashion-mnist package puts the idx files.
SYSTEM_IDX_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist"), "mnist": Path("/usr/share/datasets/mnist")}

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


# --- CIFAR python-format folders -------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches without running arbitrary code.

    The CIFAR files hold dicts of bytes, lists and numpy arrays; only the numpy
    functions needed to rebuild an array are allowed, everything else is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_pickle(path: Path, required: tuple[bytes, ...] = ()) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise UserError(f"cannot read CIFAR file '{path}' ({err}); re-extract the CIFAR python archive")
    if not isinstance(batch, dict):
        raise UserError(f"CIFAR file '{path}' holds a {type(batch).__name__}, not a dictionary; "
                        "re-extract the CIFAR python archive")
    missing = [key.decode() for key in required if key not in batch]
    if missing:
        raise UserError(f"CIFAR file '{path}' lacks {', '.join(missing)}; re-extract the CIFAR python archive")
    return batch


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get(b"data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"CIFAR file '{path}' has data of shape {data.shape}, expected (N, 3072); re-extract it")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8)


def read_cifar_folder(folder: Path) -> Arrays:
    """Read ``cifar-10-batches-py`` or ``cifar-100-python`` (or the folder holding it)."""
    for candidate in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python"):
        if (candidate / "data_batch_1").is_file():
            return _read_cifar10(candidate)
        if (candidate / "train").is_file() and (candidate / "meta").is_file():
            return _read_cifar100(candidate)
    raise UserError(
        f"'{folder}' holds no CIFAR python-format data (data_batch_1..5 or train/test/meta); "
        "point --data-dir at the extracted cifar-10-batches-py or cifar-100-python folder"
    )


def _read_cifar10(folder: Path) -> Arrays:
    xs, ys = [], []
    for i in range(1, 6):
        path = folder / f"data_batch_{i}"
        if not path.is_file():
            raise UserError(f"CIFAR-10 folder '{folder}' is missing {path.name}; re-extract the archive")
        batch = _read_cifar_pickle(path, (b"data", b"labels"))
        xs.append(_cifar_images(batch, path))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    test_path = folder / "test_batch"
    if not test_path.is_file():
        raise UserError(f"CIFAR-10 folder '{folder}' is missing test_batch; re-extract the archive")
    test = _read_cifar_pickle(test_path, (b"data", b"labels"))
    meta_path = folder / "batches.meta"
    names = [f"class_{i}" for i in range(10)]
    if meta_path.is_file():
        names = [n.decode() for n in _read_cifar_pickle(meta_path, (b"label_names",))[b"label_names"]]
    return (np.concatenate(xs), np.concatenate(ys), _cifar_images(test, test_path),
            np.asarray(test[b"labels"], dtype=np.int64), names)


def _read_cifar100(folder: Path) -> Arrays:
    train_path, test_path = folder / "train", folder / "test"
    if not test_path.is_file():
        raise UserError(f"CIFAR-100 folder '{folder}' is missing 'test'; re-extract the archive")
    train = _read_cifar_pickle(train_path, (b"data", b"fine_labels"))
    test = _read_cifar_pickle(test_path, (b"data", b"fine_labels"))
    names = [n.decode() for n in _read_cifar_pickle(folder / "meta", (b"fine_label_names",))[b"fine_label_names"]]
    return (_cifar_images(train, train_path), np.asarray(train[b"fine_labels"], dtype=np.int64),
            _cifar_images(test, test_path), np.asarray(test[b"fine_labels"], dtype=np.int64), names)


# --- MNIST-style idx files ----------------------------------------------------

def _open_idx(folder: Path, stem: str) -> bytes:
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.is_file():
            try:
                raw = path.read_bytes()
                return gzip.decompress(raw) if name.endswith(".gz") else raw
            except (OSError, EOFError, gzip.BadGzipFile) as err:
                raise UserError(f"cannot read '{path}' ({err}); the file is corrupt, fetch it again")
    raise UserError(f"'{folder}' has no {stem}[.gz]; point --data-dir at a folder with the four idx files")


def _parse_idx(raw: bytes, stem: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"'{stem}' is not an idx file of unsigned bytes; fetch it again")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"'{stem}' is truncated inside its header ({len(raw)} bytes); fetch it again")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"'{stem}' is truncated: header says {dims}, found {body.size} bytes; fetch it again")
    return body.reshape(dims)


def read_idx_folder(folder: Path) -> Arrays:
    """Read the four (Fashion-)MNIST idx files, gzipped or not."""
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _parse_idx(_open_idx(folder, f"{prefix}-images-idx3-ubyte"), f"{prefix}-images")
        labels = _parse_idx(_open_idx(folder, f"{prefix}-labels-idx1-ubyte"), f"{prefix}-labels")
        if len(images) != len(labels):
            raise UserError(f"'{folder}': {len(images)} {split} images but {len(labels)} labels; fetch the files again")
        parts[split] = (images[..., None].copy(), labels.astype(np.int64))
    names = list(FASHION_MNIST_CLASSES) if "fashion" in str(folder).lower() else [str(i) for i in range(10)]
    return (*parts["train"], *parts["test"], names)


def looks_like_idx_folder(folder: Path) -> bool:
    return any(folder.glob("train-images-idx3-ubyte*"))


# --- other sources --------------------------------------------------------------

def read_npz(path: Path) -> Arrays:
    if not path.is_file():
        raise UserError(f"npz file '{path}' does not exist; pass npz:PATH to an existing file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise UserError(f"npz file '{path}' lacks {', '.join(sorted(missing))}; "
                                "it needs x_train, y_train, x_test, y_test")
            arrays = [archive[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            names = [str(n) for n in archive["class_names"]] if "class_names" in archive.files else None
            declared = archive["num_classes"] if "num_classes" in archive.files else None
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read npz file '{path}' ({err}); write it with numpy.savez")
    for key, labels in (("y_train", arrays[1]), ("y_test", arrays[3])):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"npz file '{path}': {key} must be a 1-D array of whole-number class ids, "
                            f"got dtype {labels.dtype} and shape {labels.shape}")
    x_train, y_train, x_test, y_test = (to_uint8_images(arrays[0], path), arrays[1].astype(np.int64),
                                        to_uint8_images(arrays[2], path), arrays[3].astype(np.int64))
    seen = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if names is None and declared is not None:
        if declared.ndim != 0 or not np.issubdtype(declared.dtype, np.integer) or int(declared) < seen:
            raise UserError(f"npz file '{path}': num_classes must be one whole number >= {seen} (the labels use "
                            f"0..{seen - 1})")
        names = [str(i) for i in range(int(declared))]
    if names is None:
        used = len(np.union1d(y_train, y_test))
        if seen - used > used:
            # e.g. one stray label 255 among ten classes: 256 classes, 245 of them empty.
            raise UserError(f"npz file '{path}': labels go up to {seen - 1} but only {used} of those {seen} class ids "
                            "occur; fix the stray labels, or declare num_classes (or class_names) in the npz if the "
                            "empty classes are meant")
    return x_train, y_train, x_test, y_test, names or [str(i) for i in range(seen)]


def to_uint8_images(x: np.ndarray, origin) -> np.ndarray:
    """Images as uint8 NHWC; float input must be in [0, 1]."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(f"images in '{origin}' have shape {x.shape}; expected (N, H, W) or (N, H, W, C)")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"images in '{origin}' have dtype {x.dtype}; store uint8 in [0, 255] or floats in [0, 1]")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"integer images in '{origin}' must be in [0, 255]; found [{x.min()}, {x.max()}]")
        return x.astype(np.uint8)
    if x.size and not np.isfinite(x).all():
        raise UserError(f"images in '{origin}' contain NaN or infinite pixels; clean the data first")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise UserError(f"float images in '{origin}' must be in [0, 1]; found [{x.min():.3g}, {x.max():.3g}]")
    return np.round(x * 255).astype(np.uint8)


def read_digits() -> Arrays:
    """The 8x8 handwritten digits bundled with scikit-learn (no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    n_test = len(labels) // 5
    return images[n_test:], labels[n_test:], images[:n_test], labels[:n_test], [str(i) for i in range(10)]


def make_synthetic(n_train=512, n_test=256, shape=(16, 16, 3), num_classes=10, seed=0) -> Arrays:
    """Class prototypes plus noise: learnable in a few steps, for tests."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.2, 0.8, size=(num_classes, *shape))

    def draw(n):
        labels = rng.integers(0, num_classes, size=n)
        images = prototypes[labels] + rng.normal(0, 0.08, size=(n, *shape))
        return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test, [f"class_{i}" for i in range(num_classes)]


def read_tfds(tfds_name: str, data_dir: str | None) -> Arrays:
    """Load a TFDS data set, preparing (downloading) it if it is not prepared yet.

    Before a download the download hosts are tried once (10 s each), so a machine
    without a route to them fails in seconds with the host named, instead of
    after TFDS's ten silent retries (about 3.5 minutes)."""
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if not builder.is_prepared():
            urls = tfds_download_urls(builder)
            announce_download(tfds_name, builder, urls)
            check_reachable(tfds_name, urls)
            builder.download_and_prepare()
        splits = {}
        for split in ("train", "test"):
            ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
            images, labels = tfds.as_numpy(ds)
            splits[split] = (images.astype(np.uint8), labels.astype(np.int64))
        names = builder.info.features["label"].names
    except UserError:
        raise
    except Exception as err:  # TFDS raises many types (imports, network, missing files, checksums)
        raise UserError(tfds_failure_message(tfds_name, data_dir, err))
    return (*splits["train"], *splits["test"], list(names))


def tfds_download_urls(builder) -> list[str]:
    """The URLs TFDS will download for ``builder``, from its registered checksums
    (empty where it registers none)."""
    return sorted(builder.url_infos or {})


def _download_megabytes(builder, urls: list[str]) -> float:
    infos = builder.url_infos or {}
    return sum(getattr(infos.get(url), "size", 0) or 0 for url in urls) / 1e6


def announce_download(tfds_name: str, builder, urls: list[str]) -> None:
    """Say, before TFDS goes silent for minutes, what is fetched and where it goes
    (Keras's own dataset loaders print the same kind of line)."""
    import sys

    size = _download_megabytes(builder, urls)
    amount = f"about {size:.0f} MB" if size else "its archives"
    print(f"first use of '{tfds_name}': TFDS downloads {amount} and prepares it in '{builder.data_dir}' "
          "(once; later runs read the prepared copy)", file=sys.stderr)


def _proxied() -> bool:
    import os

    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                  "ALL_PROXY", "all_proxy"))


def check_reachable(tfds_name: str, urls: list[str], timeout: float = 10.0) -> None:
    """Refuse in seconds when a download host cannot be reached (a direct TCP
    connection; skipped behind a proxy, which requests would use instead)."""
    import socket
    from urllib.parse import urlsplit

    if _proxied():
        return
    hosts = sorted({(urlsplit(url).hostname, urlsplit(url).port or (443 if url.startswith("https") else 80))
                    for url in urls if urlsplit(url).hostname})
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            raise UserError(f"cannot reach {host}:{port} to download TFDS data set '{tfds_name}' "
                            f"({err.strerror or type(err).__name__}); {_prepare_elsewhere(tfds_name)}")


def _prepare_elsewhere(tfds_name: str) -> str:
    return (f"on a machine with internet run `tfds build {tfds_name} --data_dir DIR`, copy DIR here and pass "
            "--data-dir DIR (or give a local folder of the data set's files)")


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


_NETWORK_ERROR_NAMES = {"ConnectionError", "MaxRetryError", "NewConnectionError", "DownloadError", "Timeout",
                        "ConnectTimeout", "ReadTimeout", "gaierror", "SSLError", "ProxyError"}


def tfds_failure_message(tfds_name: str, data_dir: str | None, err: BaseException) -> str:
    """One line naming the real cause: a broken install, an unreachable host, or
    whatever TFDS said."""
    where = f" in '{data_dir}'" if data_dir else ""
    for cause in _causes(err):
        if isinstance(cause, ImportError):
            missing = getattr(cause, "name", None) or str(cause)
            return (f"TFDS cannot prepare '{tfds_name}': the Python package '{missing}' it needs is not installed "
                    f"(a broken install); run `pip install {missing}` or reinstall sglr-keras")
        if type(cause).__name__ in _NETWORK_ERROR_NAMES or isinstance(cause, (ConnectionError, TimeoutError)):
            return (f"TFDS could not download '{tfds_name}' ({_first_line(cause)}); the download host could not "
                    f"be reached; {_prepare_elsewhere(tfds_name)}")
    return (f"TFDS data set '{tfds_name}' could not be loaded{where} ({_first_line(err)}); "
            f"{_prepare_elsewhere(tfds_name)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def has_cifar_files(folder: Path) -> bool:
    return any(
        (candidate / marker).is_file()
        for candidate in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python")
        for marker in ("data_batch_1", "meta")
    )
