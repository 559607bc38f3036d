"""The Keras-to-PyTorch bridge of benchmarks/torch_bridge: AutoAttack numbers from
PyTorch libraries are only comparable if the replayed network is the same function.
The replay checks need torch (a benchmark dependency, not a test one) and are
skipped without it; the export side always runs."""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from sglr_keras.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "torch_bridge"))
from export_graph import graph_of, write  # noqa: E402

# Both paddings: "torch" replays ZeroPadding2D layers, "keras" the asymmetric 'same'.
ARCHS = [("small_cnn", (28, 28, 1), 0.25, "torch"), ("preact_resnet18", (28, 28, 1), 0.125, "torch"),
         ("resnet18", (32, 32, 3), 0.125, "torch"), ("wrn28_10", (32, 32, 3), 0.05, "torch"),
         ("resnet18", (32, 32, 3), 0.125, "keras"), ("preact_resnet18", (32, 32, 3), 0.125, "keras")]


def _model_with_batchnorm_statistics(arch, shape, width, padding="torch"):
    # Fresh batch norms are identities; random statistics make a wrong mapping show.
    keras.utils.set_random_seed(0)
    model = build_model(arch, shape, 10, width=width, padding=padding)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, size).astype("float32"))
    return model


def test_every_layer_is_exported_in_order_and_unknown_layers_are_refused():
    model = build_model("preact_resnet18", (28, 28, 1), 10, width=0.125)
    ops, arrays = graph_of(model)
    assert [op["name"] for op in ops] == [layer.name for layer in model.layers]
    assert sum(array.size for array in arrays.values()) == sum(int(np.prod(w.shape)) for w in model.weights)
    inputs = keras.Input((4,))
    odd = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LeakyReLU()(inputs)))
    with pytest.raises(ValueError, match="has no PyTorch replay"):
        graph_of(odd)


@pytest.mark.parametrize("arch, shape, width, padding", ARCHS)
def test_the_replay_computes_the_keras_logits(tmp_path, arch, shape, width, padding):
    torch = pytest.importorskip("torch")
    from replay import check, load

    model = _model_with_batchnorm_statistics(arch, shape, width, padding)
    x = np.random.default_rng(1).uniform(0, 1, (16, *shape)).astype("float32")
    write(str(tmp_path / "m.npz"), model, x, np.zeros(16, np.int64))
    replayed, points = load(str(tmp_path / "m.npz"))
    assert check(replayed, points) < 1e-5
    # The stored logits are the model's own, and gradients flow to the input.
    np.testing.assert_allclose(points["logits"], np.asarray(model(x, training=False)), atol=1e-6)
    images = torch.from_numpy(points["x"]).requires_grad_(True)
    replayed(images).sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def _aa_result_file(path, suite, device, models):
    path.write_text(json.dumps({"suite": suite, "machine": {"device": device}, "eps": 0.1, "models": models}))
    return path


def test_aa_report_names_who_attacked_each_checkpoint_and_refuses_other_points(tmp_path):
    from aa_report import load_results, markdown, rows

    from sglr_keras.runs import points_digest

    indices = [3, 1, 4]
    runs = tmp_path / "runs"

    def final(run, checkpoint, pgd):  # the run's own final attacks on the 3 points, as sglr reproduce caches them
        from sglr_keras.evaluation_report import AttackOutcome, EvaluationReport
        from sglr_keras.reproduce.final import FinalRecord

        (runs / run).mkdir(parents=True, exist_ok=True)
        report = EvaluationReport(3, "Linf", 0.1, 1.0, 0.0, tuple(AttackOutcome(a, pgd, round(3 * pgd), 1.0)
                                                                  for a in ("pgd", "cw")))
        (runs / run / f"{checkpoint}.keras.final.json").write_text(json.dumps(
            FinalRecord(report, {}, points_digest(indices)).to_dict()))

    def aa(robust, with_indices=True):
        return {"n_examples": 3, "clean_accuracy": 1.0, "robust_accuracy": robust,
                **({"test_indices": indices} if with_indices else {})}

    for run in ("pgd-at", "pgd-at-seed1", "sglr-paper", "sglr-paper-seed1"):
        final(run, "last", 2 / 3)
        final(run, "best", 1.0)
    gpu = _aa_result_file(tmp_path / "gpu.json", "standard", "NVIDIA H200", {
        "pgd-at__last": aa(1 / 3), "pgd-at-seed1__last": aa(1 / 3)})
    cpu = _aa_result_file(tmp_path / "cpu.json", "ours-standard", "x86_64", {  # no indices: matched by counts
        "sglr-paper__last": aa(2 / 3, with_indices=False), "sglr-paper-seed1__last": aa(2 / 3, with_indices=False),
        "pgd-at__best": aa(2 / 3), "pgd-at-seed1__best": aa(2 / 3),
        "sglr-paper__best": aa(2 / 3), "sglr-paper-seed1__best": aa(1.0)})

    table = rows(runs, load_results([gpu, cpu]))
    assert [(row["run"], row["checkpoint"], row["aa"], row["by"]) for row in table][:3] == [
        ("pgd-at", "best", 2 / 3, "ours, CPU"), ("pgd-at", "last", 1 / 3, "torchattacks (standard suite), NVIDIA H200"),
        ("pgd-at-seed1", "best", 2 / 3, "ours, CPU")]
    report = markdown(table)
    assert "| pgd-at | last | 3 | 100.0 | 66.7 | 66.7 | 33.3 | +33.3 | torchattacks (standard suite), NVIDIA H200 |" in report
    # best - last: pgd-at AutoAttack 66.7 - 33.3 in both seeds, PGD-20 100 - 66.7
    assert "| pgd-at | 2 | 66.7 +- 0.0 | 33.3 +- 0.0 | 33.3 +- 0.0 | 33.3 +- 0.0 |" in report
    # paired by seed, with the best checkpoints' columns named as such
    assert "(best checkpoints)\n\n| method - pgd-at | PGD-20 best | AA best | clean best |" in report
    assert "| sglr-paper | +0.0 +- 0.0 (n=2; +0.0, +0.0) | +16.7 +- 23.6 (n=2; +0.0, +33.3) |" in report
    assert "**+33.3 +- 0.0** (n=2; +33.3, +33.3)" in report.split("(last checkpoints)")[1]  # AA last

    with pytest.raises(SystemExit, match="more than one result file"):
        load_results([gpu, gpu])
    other = _aa_result_file(tmp_path / "other.json", "standard", "NVIDIA H200", {
        "pgd-at__last": {**aa(1 / 3), "test_indices": [3, 1, 5]}})
    with pytest.raises(SystemExit, match="not the final evaluation's points"):
        rows(runs, load_results([other]))


def test_the_authors_loop_network_has_our_parameter_count():
    pytest.importorskip("torch")
    from authors_loop import PreActResNet18  # builds only: no training in a TensorFlow process

    for shape, width in (((28, 28, 1), 0.25), ((32, 32, 3), 0.5)):
        theirs = sum(p.numel() for p in PreActResNet18(shape[-1], 10, width).parameters())
        ours = build_model("preact_resnet18", shape, 10, width=width)
        assert theirs == sum(int(np.prod(w.shape)) for w in ours.trainable_weights)


def test_the_authors_loop_trains_on_a_run_folders_data(tmp_path):
    pytest.importorskip("torch")
    import subprocess
    import sys

    from tests.conftest import run_cli

    config = tmp_path / "c.yaml"
    config.write_text("method: sglr\nepochs: 2\nbatch_size: 32\ndata: {dataset: synthetic, train_subset: 64}\n"
                      "model: {arch: preact_resnet18, width: 0.125}\nattack: {eps: 8/255, step_size: 2/255, steps: 1}\n"
                      "sglr: {preset: reference-code, warmup_epochs: 1}\n"
                      "evaluation: {n_test: 16, n_train: 16, pgd_steps: 1, batch_size: 64}\n")
    assert run_cli("train", "--config", config, "--out", tmp_path / "run").exit_code == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_bridge" / "export_run_data.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "--out", str(tmp_path / "d.npz"),
                    "--final-points", "16"], check=True, capture_output=True)
    with np.load(tmp_path / "d.npz") as data:
        assert (len(data["y_train"]), len(data["y_select"]), len(data["y_final"])) == (64, 16, 16)
    # PyTorch and TensorFlow each bring their own OpenMP/oneDNN: never both in one process.
    subprocess.run([sys.executable, str(script.with_name("authors_loop.py")), str(tmp_path / "d.npz"), "--loss",
                    "sgls", "--es", "2", "--out", str(tmp_path / "curve.jsonl")], check=True, capture_output=True)
    lines = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and "test_robust_acc" in epochs[-1]
    assert epochs[0]["table_entropy"] < 1e-6 < epochs[1]["table_entropy"]  # refining from epoch 2 (es)
    assert set(lines[-1]["final"]) == {"best", "last"}


def test_the_pytorch_reference_step_times_every_precision_and_layout():
    pytest.importorskip("torch")
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_step.py"
    done = subprocess.run([sys.executable, str(script), "--arch", "resnet18", "--input-shape", "8,8,3", "--batch-size",
                           "4", "--attack-steps", "1", "--steps", "1", "--repeats", "1"], capture_output=True, text=True,
                          check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert set(results) == {"float32/nchw", "float32/channels_last", "bfloat16/nchw", "bfloat16/channels_last"}
    assert all(r["images_per_second"] > 0 for r in results.values())
