"""Tiny archives in the published formats of the TFDS data sets we name, served
from 127.0.0.1 to TFDS's own download manager, so that the preparation path a
user's first ``--dataset cifar100`` runs is tested without a network.

What is real: TFDS's builder, download manager (requests over HTTP), extractor,
the builder's parser of the published format and its TFRecord writer. What the
tests bend: the host part of each published URL (rewritten to the local server),
the registered checksums (tiny archives cannot match them) and, for MNIST-style
builders, the hard-coded example counts (60000/10000).
"""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import struct
import tarfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

N_TRAIN, N_TEST = 40, 20
# Where each builder downloads from (the published URLs, as TFDS 4.9 has them).
PUBLISHED = {
    "cifar10": ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"],
    "cifar100": ["https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"],
    "mnist": [f"https://storage.googleapis.com/cvdf-datasets/mnist/{f}" for f in
              ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")],
    "fashion_mnist": [f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}" for f in
                      ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")],
    "svhn_cropped": [f"http://ufldl.stanford.edu/housenumbers/{f}" for f in
                     ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat")],
}


def _labels(n, classes, seed):
    # Every class at least once when n allows, so class counts are realistic.
    return (np.arange(n) + seed) % classes


def _images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _cifar_binary(images, label_columns) -> bytes:
    """The CIFAR binary format: per image, its label bytes then 3072 bytes, CHW."""
    rows = [np.concatenate([np.asarray(labels, np.uint8), image.transpose(2, 0, 1).ravel()])
            for image, labels in zip(images, zip(*label_columns))]
    return np.stack(rows).tobytes()


def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _write_cifar10(folder: Path) -> None:
    members = {"cifar-10-batches-bin/batches.meta.txt": "\n".join(f"c10_{i}" for i in range(10)).encode() + b"\n"}
    for b in range(5):
        members[f"cifar-10-batches-bin/data_batch_{b + 1}.bin"] = _cifar_binary(
            _images(N_TRAIN // 5, (32, 32, 3), b), [_labels(N_TRAIN // 5, 10, b)])
    members["cifar-10-batches-bin/test_batch.bin"] = _cifar_binary(_images(N_TEST, (32, 32, 3), 9),
                                                                   [_labels(N_TEST, 10, 0)])
    _tar_gz(folder / "cifar-10-binary.tar.gz", members)


def _write_cifar100(folder: Path) -> None:
    # Few images but all 100 fine labels named, as in the real archive.
    members = {
        "cifar-100-binary/coarse_label_names.txt": "\n".join(f"coarse_{i}" for i in range(20)).encode() + b"\n",
        "cifar-100-binary/fine_label_names.txt": "\n".join(f"fine_{i}" for i in range(100)).encode() + b"\n",
    }
    for split, n, seed in (("train", N_TRAIN * 3, 1), ("test", N_TEST, 2)):
        fine = _labels(n, 100, seed)
        members[f"cifar-100-binary/{split}.bin"] = _cifar_binary(_images(n, (32, 32, 3), seed), [fine // 5, fine])
    _tar_gz(folder / "cifar-100-binary.tar.gz", members)


def _idx(array: np.ndarray) -> bytes:
    """The idx format: magic (0, 0, uint8 code 8, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _write_mnist_style(folder: Path) -> None:
    for prefix, n, seed in (("train", N_TRAIN, 3), ("t10k", N_TEST, 4)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(_images(n, (28, 28), seed)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(_labels(n, 10, seed)))


def _write_svhn(folder: Path) -> None:
    from scipy.io import savemat

    for split, n, seed in (("train", N_TRAIN, 5), ("test", N_TEST, 6), ("extra", 10, 7)):
        # X is (32, 32, 3, N); y is (N, 1) with digit 0 stored as 10.
        digits = _labels(n, 10, seed)
        savemat(folder / f"{split}_32x32.mat", {"X": _images(n, (32, 32, 3), seed).transpose(1, 2, 3, 0),
                                                "y": np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)})


WRITERS = {"cifar10": _write_cifar10, "cifar100": _write_cifar100, "mnist": _write_mnist_style,
           "fashion_mnist": _write_mnist_style, "svhn_cropped": _write_svhn}


def write_archives(root: Path) -> None:
    """Every data set's files under ``root/<host>/<path>`` of its published URL."""
    for name, urls in PUBLISHED.items():
        folder = root / urlsplit(urls[0]).hostname / Path(urlsplit(urls[0]).path).parent.relative_to("/")
        folder.mkdir(parents=True, exist_ok=True)
        WRITERS[name](folder)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: Path):
    """A server on 127.0.0.1 (a free port) for ``root``; returns (base_url, stop)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


def local_url(base: str, url: str) -> str:
    parts = urlsplit(url)
    return f"{base}/{parts.hostname}{parts.path}"
