"""The soft-label table and the weights under tf.distribute, on CPU replicas and
on two local workers."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def test_two_replicas_match_one_replica_with_the_same_global_batch(tmp_path):
    subprocess.run([sys.executable, str(HERE / "replica_run.py"), str(tmp_path)], check=True, timeout=600,
                   cwd=HERE.parent, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    result = np.load(tmp_path / "result.npz")
    # After each of the epoch's 2 steps the two replicas' copies of the table were identical.
    assert int(result["steps_checked"]) == 2
    assert float(result["replica_gap"]) == 0.0
    # Table and weights agree with one replica up to float32 rounding: two replicas
    # sum two half-batch gradients where one replica sums the whole batch (about
    # 1e-7 relative per step, 2e-5 after 8 steps of plain training). The epoch is
    # kept to 2 steps because PGD's sign() turns such last-bit differences in the
    # weights into whole-step pixel flips, which then grow step by step.
    table_1, table_2 = result["table_1"], result["table_2"]
    assert table_1.shape == (128, 10)
    assert not np.allclose(table_1, np.eye(10)[np.argmax(table_1, axis=1)])  # the table did move
    np.testing.assert_allclose(table_2, table_1, atol=1e-5)
    weight_keys = sorted(k for k in result.files if k.startswith("w1_"))
    for key in weight_keys:
        np.testing.assert_allclose(result[key.replace("w1_", "w2_")], result[key], atol=1e-5, rtol=1e-4)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_local_workers_train_and_the_chief_checkpoint_evaluates(tmp_path):
    # PGD-AT: the soft-label table is refused under multi-worker for now (see distribute.check_supported).
    config = tmp_path / "config.yaml"
    config.write_text(
        "method: pgd-at\nepochs: 1\nbatch_size: 64\ndata: {dataset: synthetic}\n"
        "model: {arch: small_cnn, width: 0.5}\nattack: {eps: 8/255, step_size: 2/255, steps: 2}\n"
        "optimizer: {lr: 0.05}\nevaluation: {n_test: 32, n_train: 32, pgd_steps: 2, batch_size: 64}\n")
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    out = tmp_path / "run"
    sglr = Path(sys.executable).parent / "sglr"
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        processes.append(subprocess.Popen(
            [str(sglr), "train", "--config", str(config), "--strategy", "multi-worker", "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".worker")) == []
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1]
    result = subprocess.run([str(sglr), "eval", "--checkpoint", str(out / "best.keras"), "--attack", "pgd",
                             "--n-examples", "32"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_multi_worker_refuses_the_soft_label_table_with_a_clear_error(tmp_path):
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{_free_port()}"]}, "task": {"type": "worker", "index": 0}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([str(Path(sys.executable).parent / "sglr"), "train", "--dataset", "synthetic",
                             "--method", "sglr", "--strategy", "multi-worker", "--out", str(tmp_path / "run")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not support --method sglr yet" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
