"""The soft-label table and the weights under tf.distribute, on CPU replicas and
on two local workers."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

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


def test_gathering_pairs_from_replicas_with_unequal_batches_is_exact():
    result = subprocess.run([sys.executable, str(HERE / "gather_run.py")], capture_output=True, text=True,
                            timeout=300, cwd=HERE.parent, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    gathered = json.loads(result.stdout.strip().splitlines()[-1])
    expected_rows = [[0.5, 0.5], [1.0, 0.0], [0.25, 0.75], [0.0, 1.0], [0.125, 0.875]]
    assert gathered["indices"] == [[4, 0, 7, 2, 9]] * 2  # replica order, padding dropped, on both replicas
    assert gathered["rows"] == [expected_rows] * 2


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _table(run_dir):
    """The soft-label table saved in a run's training state."""
    with h5py.File(run_dir / "state" / "trainer.weights.h5", "r") as weights:
        found = []
        weights.visititems(lambda name, item: found.append(np.asarray(item))
                           if isinstance(item, h5py.Dataset) and item.shape == (128, 10) else None)
    assert len(found) == 1
    return found[0]


def test_two_local_workers_train_sglr_and_the_chief_checkpoint_evaluates(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "method: sglr\nepochs: 1\nbatch_size: 64\ndata: {dataset: synthetic, train_subset: 128, augment: false}\n"
        "model: {arch: small_cnn, width: 0.5, sync_batchnorm: true}\n"
        "attack: {eps: 8/255, step_size: 2/255, steps: 2}\noptimizer: {lr: 0.05}\nsglr: {alpha: 0.5}\n"
        "evaluation: {n_test: 32, n_train: 32, pgd_steps: 2, batch_size: 64}\n")
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

    # The same global batches in one process give the same table (tolerance as above).
    single = tmp_path / "single"
    subprocess.run([str(sglr), "train", "--config", str(config), "--strategy", "default", "--out", str(single)],
                   check=True, capture_output=True, timeout=300)
    table_workers, table_single = _table(out), _table(single)
    assert not np.allclose(table_single, np.eye(10)[np.argmax(table_single, axis=1)])
    np.testing.assert_allclose(table_workers.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(table_workers, table_single, atol=1e-5)
