import pytest

from sglr_keras.config import SGLR_PRESETS, load_config
from sglr_keras.errors import UserError


def test_defaults_are_the_offline_quickstart():
    config = load_config()
    assert (config.data.dataset, config.model.arch, config.method) == ("digits", "small_cnn", "pgd-at")
    assert config.optimizer.milestone_epochs(200) == [100, 150]


def test_fractions_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("attack: {eps: 8/255}\nepochs: 5\n")
    config = load_config(path, {"epochs": 7, "data.dataset": None})
    assert config.attack.eps == pytest.approx(8 / 255)
    assert config.epochs == 7  # the flag wins over the file
    assert config.data.dataset == "digits"  # an unset flag keeps the file's value


def test_preset_fills_values_and_explicit_keys_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: sglr\nepochs: 200\nsglr: {preset: reference-code, alpha: 0.8}\n")
    config = load_config(path)
    assert config.sglr.r == SGLR_PRESETS["reference-code"]["r"] == 1.0
    # The reference code's es=90 (epochs from 1): 89 hard-label epochs (issue 12).
    assert config.sglr.warmup_epochs == 89
    assert config.sglr.alpha == 0.8


@pytest.mark.parametrize("overrides, message", [
    ({"sglr.r": 1.5}, "'sglr.r': 1.5 is out of range"),
    ({"sglr.alpha": -0.1}, "'sglr.alpha'"),
    ({"sglr.lam": 2}, "'sglr.lam'"),
    ({"attack.eps": -0.1}, "'attack.eps'"),
    ({"attack.eps": 1.5}, "'attack.eps'"),
    ({"attack.eps": "eight"}, "not a number"),
    ({"method": "sgd"}, "unknown value 'sgd'"),
    ({"model.arch": "vgg"}, "unknown arch 'vgg'"),
    ({"data.dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"epochs": 0}, "'epochs'"),
    ({"batch_size": 2.5}, "'batch_size'"),
    ({"method": "sglr", "sglr.warmup_epochs": 50, "epochs": 10}, "warmup_epochs"),
    ({"optimizer.lr_milestones": [150, 100]}, "lr_milestones"),
    ({"sglr.table_dtype": "int8"}, "table_dtype"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sglr: {rr: 0.3}\n")
    with pytest.raises(UserError, match="unknown config key 'sglr.rr'"):
        load_config(path)


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))  # repro/ holds experiments
    assert len(configs) >= 5
    for path in configs:
        load_config(path)
