import json

from tests.conftest import run_cli


def _fake_run(folder, robust):
    folder.mkdir()
    lines = [json.dumps({"epoch": i + 1, "test_robust_acc": acc, "train_robust_acc": acc + 0.1 * i,
                         "test_clean_acc": 0.8, "grad_norm": 1.0 + i, "robust_gap": 0.1 * i, "test_ece": 0.05})
             for i, acc in enumerate(robust)]
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")


def test_report_writes_plots_and_a_table_of_best_last_and_gap(tmp_path):
    _fake_run(tmp_path / "pgd-at", [0.30, 0.45, 0.40, 0.36])
    _fake_run(tmp_path / "sglr", [0.30, 0.44, 0.45, 0.46])
    out = tmp_path / "report"
    result = run_cli("report", tmp_path / "pgd-at", tmp_path / "sglr", "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("robust_accuracy.png", "gradient_norm.png", "generalisation_gap.png", "clean_accuracy.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    table = (out / "report.md").read_text()
    assert "| pgd-at | 4 | 2 | 45.00 | 36.00 | 9.00 |" in table
    assert "| sglr | 4 | 4 | 46.00 | 46.00 | 0.00 |" in table


def test_report_refuses_a_folder_without_history(tmp_path):
    result = run_cli("report", tmp_path)
    assert result.exit_code == 2 and "has no history.jsonl" in result.output
