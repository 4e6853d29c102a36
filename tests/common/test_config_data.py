import pandas as pd
import pytest

from fedvault.common.config import TrainingConfig, parse_fields
from fedvault.common.data import check_target, default_dataset, load_table
from fedvault.common.errors import ConfigError, DataError


def test_defaults_are_the_documented_budget():
    cfg = TrainingConfig()
    assert (cfg.epsilon, cfg.delta, cfg.dp) == (3.0, 1e-5, True)
    assert TrainingConfig.from_run_config(cfg.to_run_config()) == cfg


def test_feature_columns_travel_in_the_run_config_as_json():
    cfg = parse_fields(TrainingConfig, {"features": ["age", "bmi"]}, source="t")
    wire = cfg.to_run_config()
    assert wire["features"] == '["age", "bmi"]'  # Flower's run config holds scalars
    assert TrainingConfig.from_run_config(wire).features == ("age", "bmi")
    with pytest.raises(ConfigError, match="features: not a JSON list"):
        TrainingConfig.from_run_config({"features": "age,bmi"})


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"rounds": 0}, "rounds"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": 0}, "epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"accountant": "gdp"}, "accountant"),
        ({"batch-size": 2.5}, "batch-size"),
        ({"dp": "yes"}, "dp"),
        ({"learning-rate": 0.1}, "learning-rate"),
        ({"features": "age"}, "features"),
        ({"features": ["age", ""]}, "features"),
        ({"regression-loss": "mae"}, "regression-loss"),
        ({"regression-loss": "huber", "task": "classification"}, "regression-loss"),
    ],
)
def test_bad_settings_name_their_key(mapping, key):
    with pytest.raises(ConfigError, match=key):
        parse_fields(TrainingConfig, mapping, source="test")


def test_default_dataset_is_breast_cancer():
    frame = default_dataset()
    assert frame.shape == (569, 31)
    assert sorted(frame["target"].unique()) == [0, 1]


def test_load_table_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_table(tmp_path / "empty.csv")
    (tmp_path / "bad.csv").write_text('a,b\n1,2\n3,"4\n')
    with pytest.raises(DataError, match=r"malformed|cannot read"):
        load_table(tmp_path / "bad.csv")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        load_table(tmp_path / "x.xlsx")
    (tmp_path / "latin.csv").write_bytes("name\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        load_table(tmp_path / "latin.csv")


def test_check_target():
    frame = pd.DataFrame({"x": [1, 2, 3], "y": [0, None, 1]})
    assert len(check_target(frame, "y", source="t")) == 2
    with pytest.raises(DataError, match="'z' not found"):
        check_target(frame, "z", source="t")
    with pytest.raises(DataError, match="1 class"):
        check_target(pd.DataFrame({"x": [1, 2], "y": [1, 1]}), "y", source="t")
