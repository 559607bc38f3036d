"""The first use of a TFDS data set, as a user's ``sglr train --dataset cifar100``
runs it: TFDS downloads the published archives and prepares them. Served here
from tiny archives on 127.0.0.1 (tests/tfds_sources.py says what is bent)."""

import json
import socket
import time

import pytest

from sglr_keras.data import sources
from sglr_keras.errors import UserError
from tests import tfds_sources
from tests.conftest import run_cli

TFDS_OF = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped", "mnist": "mnist",
           "fashion_mnist": "fashion_mnist"}


@pytest.fixture
def offline_tfds(tmp_path, monkeypatch):
    """TFDS's download manager fetching the tiny archives from a local server."""
    import importlib

    import tensorflow_datasets as tfds

    downloader = importlib.import_module("tensorflow_datasets.core.download.downloader")
    checksums = importlib.import_module("tensorflow_datasets.core.download.checksums")
    mnist = importlib.import_module("tensorflow_datasets.image_classification.mnist")

    root = tmp_path / "www"
    tfds_sources.write_archives(root)
    base, stop = tfds_sources.serve(root)
    open_url = downloader._open_url
    monkeypatch.setattr(downloader, "_open_url", lambda url, **kw: open_url(tfds_sources.local_url(base, url), **kw))
    monkeypatch.setattr(checksums, "get_all_url_infos", lambda: {})
    monkeypatch.setattr(tfds.core.DatasetBuilder, "url_infos", None)
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", tfds_sources.N_TRAIN)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", tfds_sources.N_TEST)
    # Our reachability check dials what the download manager will fetch.
    monkeypatch.setattr(sources, "tfds_download_urls",
                        lambda builder: [tfds_sources.local_url(base, u) for u in tfds_sources.PUBLISHED[builder.name]])
    yield base
    stop()


def _tiny_training(dataset, data_dir, out):
    return run_cli("train", "--dataset", dataset, "--data-dir", data_dir, "--arch", "small_cnn", "--epochs", 1,
                   "--batch-size", 16, "--out", out, "--set", "model.width=0.25", "--set", "attack.steps=1",
                   "--set", "evaluation.n_test=8", "--set", "evaluation.n_train=8", "--set", "evaluation.pgd_steps=1")


@pytest.mark.parametrize("dataset, num_classes, shape", [
    ("cifar10", 10, [32, 32, 3]), ("cifar100", 100, [32, 32, 3]), ("svhn", 10, [32, 32, 3]),
    ("mnist", 10, [28, 28, 1]), ("fashion_mnist", 10, [28, 28, 1])])
def test_first_use_prepares_the_data_set_through_tfds_and_trains(tmp_path, offline_tfds, dataset, num_classes, shape):
    data_dir = tmp_path / "tensorflow_datasets"
    data_dir.mkdir()
    result = _tiny_training(dataset, data_dir, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "first use of" in result.output
    assert any((data_dir / TFDS_OF[dataset]).glob("*/dataset_info.json"))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["num_classes"], run["input_shape"]) == (num_classes, shape)
    assert run["num_train"] == (3 * tfds_sources.N_TRAIN if dataset == "cifar100" else tfds_sources.N_TRAIN)
    # The second use reads the prepared copy: no announcement, no download.
    again = _tiny_training(dataset, data_dir, tmp_path / "run2")
    assert again.exit_code == 0 and "first use of" not in again.output


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_host_fails_in_seconds_with_the_host_named(tmp_path, offline_tfds, monkeypatch):
    port = _closed_port()
    monkeypatch.setattr(sources, "tfds_download_urls", lambda builder: [f"http://127.0.0.1:{port}/cifar.tar.gz"])
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    result = _tiny_training("cifar10", tmp_path, tmp_path / "run")
    assert time.monotonic() - started < 30
    assert result.exit_code == 2  # a user error: one line, no traceback
    assert f"cannot reach 127.0.0.1:{port}" in result.output and "tfds build cifar10" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


class _FakeConnectionError(Exception):
    pass


_FakeConnectionError.__name__ = "ConnectionError"  # as requests names its own


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize("error, expected", [
    (ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources"),
     "the Python package 'importlib_resources' it needs is not installed (a broken install); "
     "run `pip install importlib_resources`"),
    (_chained(RuntimeError("Failed to construct dataset"), ImportError("x", name="scipy")), "'scipy' it needs"),
    (_FakeConnectionError("HTTPSConnectionPool(host='x'): Max retries exceeded"), "could not be reached"),
    (_chained(RuntimeError("download failed"), socket.gaierror(-2, "Name or service not known")),
     "could not be reached"),
    (ValueError("Unrecognized split"), "could not be loaded in 'D' (Unrecognized split)"),
])
def test_failures_name_their_real_cause(error, expected):
    message = sources.tfds_failure_message("cifar100", "D", error)
    assert expected in message and "\n" not in message
    if "could not be" in expected:
        assert "tfds build cifar100 --data_dir DIR" in message


def test_reachability_check_refuses_a_closed_port_quickly():
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(UserError, match=f"cannot reach 127.0.0.1:{port} to download TFDS data set 'mnist'"):
        sources.check_reachable("mnist", [f"http://127.0.0.1:{port}/a.gz"])
    assert time.monotonic() - started < 10
