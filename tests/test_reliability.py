"""Interrupted runs resume exactly; bad input is refused without touching files."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from sglr_keras.config import load_config
from sglr_keras.errors import UserError
from sglr_keras.io import atomic_save_model, write_atomically
from sglr_keras.training.callbacks import InterruptAtStepEnd, NonFiniteGuard, NonFiniteLossError
from sglr_keras.training.run import train
from tests.conftest import run_cli

CONFIG = ("method: sglr\nepochs: 3\nbatch_size: 32\nseed: 4\ndata: {dataset: synthetic}\n"
          "model: {arch: small_cnn, width: 0.5}\nattack: {eps: 8/255, step_size: 2/255, steps: 3}\n"
          "optimizer: {lr: 0.05}\nsglr: {warmup_epochs: 1}\n"
          "evaluation: {n_test: 32, n_train: 32, pgd_steps: 2, batch_size: 64}\n")


def _sglr_command(config, out):
    return [str(Path(sys.executable).parent / "sglr"), "train", "--config", str(config), "--out", str(out)]


def _table(run):
    with h5py.File(run / "state" / "trainer.weights.h5") as handle:
        tables = []
        handle.visititems(lambda name, item: tables.append(item[()])
                          if isinstance(item, h5py.Dataset) and item.shape == (512, 10) else None)
    assert len(tables) == 1
    return tables[0]


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    env = {**os.environ, "TF_DETERMINISTIC_OPS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(_sglr_command(config, tmp_path / "whole"), env=env, check=True, timeout=600,
                   capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_sglr_command(config, interrupted), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state = interrupted / "state" / "state.json"
    deadline = time.time() + 300
    while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 3, "the run finished before it could be killed; make the epochs longer"

    subprocess.run(_sglr_command(config, interrupted), env=env, check=True, timeout=600, capture_output=True)
    history = [json.loads(line) for line in (interrupted / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    np.testing.assert_array_equal(_table(interrupted), _table(tmp_path / "whole"))
    resumed = keras.saving.load_model(interrupted / "last.keras").get_weights()
    whole = keras.saving.load_model(tmp_path / "whole" / "last.keras").get_weights()
    for a, b in zip(resumed, whole):
        np.testing.assert_array_equal(a, b)
    # The same history too, evaluations included: their random starts are seeded
    # by (seed, epoch), so the best epoch cannot change with a resume.
    reference = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    untimed = lambda record: {k: v for k, v in record.items() if "seconds" not in k}  # noqa: E731
    assert [untimed(r) for r in history] == [untimed(r) for r in reference]


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_exits_130(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("epochs: 3", "epochs: 40"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = tmp_path / "run"
    process = subprocess.Popen(_sglr_command(config, run), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    state = run / "state" / "state.json"
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    saved = json.loads(state.read_text())["epoch"]
    assert f"holds the run after epoch {saved}" in stderr and "rerun the same command" in stderr
    assert "Traceback" not in stderr
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(1, saved + 1))


def test_ctrl_c_during_fit_is_raised_from_our_code_not_wherever_python_was():
    # An interrupt raised inside a __del__ is printed and dropped; the handler only
    # records it and the callback raises at the next step end. A second one is immediate.
    before = signal.getsignal(signal.SIGINT)
    with InterruptAtStepEnd() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.on_train_batch_end(0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_run_folder_being_trained_is_refused_to_a_second_process(tmp_path, tiny_config_file):
    # Two processes writing one folder leave checkpoints and history from both
    # (it happened: two `sglr reproduce` started on the same --only list).
    import fcntl

    config = tiny_config_file(epochs=1)
    run = tmp_path / "run"
    assert run_cli("train", "--config", config, "--out", run).exit_code == 0
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    holder = os.open(run, os.O_RDONLY)  # as the other process would hold it
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        for args in ([], ["--overwrite"]):
            result = run_cli("train", "--config", config, "--out", run, *args)
            assert result.exit_code == 2, result.output
            assert "is being written by another sglr process" in result.output and "Traceback" not in result.output
            assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    finally:
        os.close(holder)
    assert run_cli("train", "--config", config, "--out", run).exit_code == 0  # free again once released


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    target = tmp_path / "last.keras"
    atomic_save_model(model, target)
    before = target.read_bytes()
    writer = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sglr_keras.io import write_atomically\n"
        "def slow(path):\n"
        "    path.write_bytes(b'partial')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"write_atomically(Path({str(target)!r}), '.keras', slow)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == b"writing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert target.read_bytes() == before
    keras.saving.load_model(target)


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    target = tmp_path / "history.jsonl"
    target.write_text("good\n")

    def fail(path):
        path.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(target, ".jsonl", fail)
    assert target.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_disk_full_while_saving_stops_with_a_clear_message(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("epochs: 3", "epochs: 2"))
    out = tmp_path / "run"
    saves = []
    real_save = keras.Model.save

    def save_until_full(self, filepath, *args, **kwargs):
        saves.append(filepath)
        if len(saves) > 2:  # epoch 1 writes best and last; epoch 2 finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_full)
    with pytest.raises(UserError, match="No space left on device.*rerun the same command to resume"):
        train(load_config(config), out, show_progress=False)
    monkeypatch.undo()
    assert json.loads((out / "state" / "state.json").read_text())["epoch"] == 1
    keras.saving.load_model(out / "last.keras")
    assert not list(out.glob(".*tmp*"))


def test_non_finite_loss_stops_the_run():
    guard = NonFiniteGuard()
    guard.on_train_batch_end(0, {"loss": 1.5})
    with pytest.raises(NonFiniteLossError, match="nan at step 3"):
        guard.on_train_batch_end(2, {"loss": float("nan")})



def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("train", "--dataset", "synthetic", "--out", blocker / "run")
    assert result.exit_code == 2 and "cannot write to --out" in result.output


def test_negative_labels_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(path, x_train=x, y_train=np.array([0, 1, -1, 2]), x_test=x, y_test=np.array([0, 1, 2, 0]))
    result = run_cli("train", "--dataset", f"npz:{path}", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "labels span [-1, 2]" in result.output


def test_batch_size_not_divisible_by_replicas(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sglr"), "train", "--dataset", "synthetic", "--cpu-replicas", "2",
         "--batch-size", "63", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "batch_size 63 is not divisible by the 2 replicas" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_resume_from_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    inputs = keras.Input((16, 16, 3))
    other = tmp_path / "other.keras"
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs))).save(other)
    result = run_cli("train", "--dataset", "synthetic", "--epochs", 1, "--resume-from", other,
                     "--out", tmp_path / "run")
    assert result.exit_code == 2 and "different architecture" in result.output
