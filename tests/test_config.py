import tomllib

import pytest

from common.config import OPTIONS_BY_KEY, RUN_OPTIONS, RunConfig
from common.errors import FedSiloError
from tests.helpers import ROOT


def test_pyproject_run_config_matches_the_option_table():
    # Flower only accepts --run-config keys that pyproject declares; keep both in step.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == {opt.key: opt.default for opt in RUN_OPTIONS}


def test_defaults_and_lists():
    cfg = RunConfig.from_dict({"labels": " neg, pos ,", "lora-targets": "query,key,value"})
    assert cfg.labels == ("neg", "pos")
    assert cfg.lora_targets == ("query", "key", "value")
    assert cfg.lr_for(dp=False) == 2e-3 and cfg.lr_for(dp=True) == 3e-3
    assert cfg.head_lr_for(dp=False) == 2e-3 and cfg.head_lr_for(dp=True) == 3e-2
    assert RunConfig.from_dict({"head-learning-rate": 0.1}).head_lr_for(dp=True) == 0.1
    assert RunConfig.from_dict({"trainable": "full"}).lr_for(dp=False) == 5e-5
    assert RunConfig.from_dict({"learning-rate": 0.03}).lr_for(dp=True) == 0.03


def test_round_trip_through_flat_dict():
    cfg = RunConfig.from_dict({"labels": "a,b,c", "rounds": 7, "learning-rate": 1})
    assert RunConfig.from_dict(cfg.to_flat()) == cfg
    assert isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize("raw, fragment", [
    ({"rounds": 0}, "rounds: must be >= 1"),
    ({"rounds": "3"}, "rounds: expected int"),
    ({"rounds": True}, "rounds: expected int"),
    ({"batch-size": 2.5}, "batch-size: expected int"),
    ({"trainable": "half"}, "trainable: must be one of"),
    ({"eval-fraction": 0.95}, "eval-fraction: must be <="),
    ({"colour": "red"}, "unknown run option(s): colour"),
    ({"labels": "a,b,a"}, "duplicates"),
    ({"lora-targets": " , "}, "lora-targets"),
    ({"secagg-neighbours": 20}, "an odd number above secagg-threshold"),
    ({"secagg-neighbours": 3, "secagg-threshold": 3, "min-sites": 3}, "an odd number above secagg-threshold"),
    ({"secagg-neighbours": 1025}, "secagg-neighbours: must be <= 1023"),
])
def test_invalid_values_are_named(raw, fragment):
    with pytest.raises(FedSiloError, match=None) as err:
        RunConfig.from_dict(raw)
    assert fragment in str(err.value)


def test_labels_are_required_where_a_run_starts():
    with pytest.raises(FedSiloError, match="at least two labels"):
        RunConfig.from_dict({"labels": "only"}).require_labels()


def test_every_option_has_help_and_matching_default_type():
    for opt in OPTIONS_BY_KEY.values():
        assert opt.help and isinstance(opt.default, opt.type)
