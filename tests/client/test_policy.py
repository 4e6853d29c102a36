"""The site policy file: parsed once, validated, and the only source of the limits."""

import pytest

from fedvault.client.policy import Decline, SitePolicy, check_request, load_policy
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError, ConfigError, PrivacyError

FULL = """
[site]
name = "st-mary"            # other tables belong to other parts of the site's setup

[privacy]
dataset-id = "icu-2024"
epsilon-max = 8.0
delta = 1e-5
min-noise-multiplier = 0.8
max-grad-norm = 1.5
accountant = "prv"
require-secure-aggregation = true
"""


def _write(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _privacy(**keys):
    lines = ["[privacy]"]
    base = {"dataset-id": '"icu-2024"', "epsilon-max": "4.0", "delta": "1e-5"}
    base |= keys
    lines += [f"{k} = {v}" for k, v in base.items() if v is not None]
    return "\n".join(lines) + "\n"


def test_full_policy_file_is_parsed_into_the_frozen_dataclass(tmp_path):
    policy = load_policy(_write(tmp_path, FULL))
    assert policy == SitePolicy(
        dataset_id="icu-2024",
        epsilon_max=8.0,
        delta=1e-5,
        min_noise_multiplier=0.8,
        max_grad_norm=1.5,
        accountant="prv",
        require_secure_aggregation=True,
    )
    with pytest.raises(AttributeError):
        policy.epsilon_max = 100.0  # type: ignore[misc]


def test_optional_keys_take_conservative_defaults(tmp_path):
    policy = load_policy(_write(tmp_path, _privacy()))
    assert policy.accountant == "rdp"
    assert policy.min_noise_multiplier == 0.5
    assert policy.max_grad_norm == 1.0
    assert policy.require_secure_aggregation is False


def test_integers_are_accepted_for_numbers(tmp_path):
    policy = load_policy(_write(tmp_path, _privacy(**{"epsilon-max": "3"})))
    assert policy.epsilon_max == 3.0
    assert isinstance(policy.epsilon_max, float)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epsilon-max", "0.0"),
        ("epsilon-max", "-1.0"),
        ("epsilon-max", "inf"),
        ("epsilon-max", "nan"),
        ("epsilon-max", '"3"'),
        ("delta", "0.0"),
        ("delta", "1.0"),
        ("delta", "1.5"),
        ("delta", "-1e-5"),
        ("accountant", '"gdp"'),
        ("accountant", '"RDP"'),
        ("min-noise-multiplier", "0.0"),
        ("min-noise-multiplier", "-0.5"),
        ("max-grad-norm", "0.0"),
        ("max-grad-norm", "inf"),
        ("require-secure-aggregation", '"yes"'),
        ("dataset-id", '"../etc/passwd"'),
        ("dataset-id", '""'),
        ("dataset-id", '".hidden"'),
        ("dataset-id", "7"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(tmp_path, key, value):
    path = _write(tmp_path, _privacy(**{key: value}))
    with pytest.raises(ConfigError, match=key):
        load_policy(path)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="epsilon"):
        load_policy(_write(tmp_path, _privacy(epsilon="3.0")))


@pytest.mark.parametrize("key", ["dataset-id", "epsilon-max", "delta"])
def test_missing_required_key_is_named(tmp_path, key):
    with pytest.raises(ConfigError, match=f"missing key '{key}'"):
        load_policy(_write(tmp_path, _privacy(**{key: None})))


def test_missing_privacy_table(tmp_path):
    with pytest.raises(ConfigError, match=r"missing \[privacy\] table"):
        load_policy(_write(tmp_path, '[site]\nname = "x"\n'))


def test_missing_file_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_policy(_write(tmp_path, "[privacy\nepsilon-max = "))


def test_dataclass_validates_direct_construction_too():
    with pytest.raises(ConfigError, match="epsilon-max"):
        SitePolicy(dataset_id="d", epsilon_max=-1.0, delta=1e-5)
    with pytest.raises(ConfigError, match="accountant"):
        SitePolicy(dataset_id="d", epsilon_max=1.0, delta=1e-5, accountant="gdp")  # type: ignore[arg-type]


# --- a run's request against the policy ---------------------------------------

POLICY = SitePolicy(
    dataset_id="icu-2024",
    epsilon_max=4.0,
    delta=1e-5,
    min_noise_multiplier=0.8,
    max_grad_norm=1.0,
    require_secure_aggregation=True,
)


def _request(**settings):
    return TrainingConfig(**({"secagg": True} | settings))


def test_request_within_the_policy_is_accepted():
    assert check_request(POLICY, _request()) is None
    relaxed = _request(max_grad_norm=0.5, noise_multiplier=0.8)
    assert check_request(POLICY, relaxed) is None


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"max_grad_norm": 1.01}, "clipping norm 1.01 exceeds"),
        ({"noise_multiplier": 0.79}, "noise multiplier 0.79 is below"),
        ({"noise_multiplier": 10.5}, "above the site's max-noise-multiplier 10"),
        ({"secagg": False}, "requires secure aggregation"),
        ({"dp": False}, "allow-non-private"),
    ],
)
def test_request_breaking_the_policy_is_declined_with_a_typed_reply(settings, fragment):
    decision = check_request(POLICY, _request(**settings))
    assert isinstance(decision, Decline)
    assert decision.reason == "policy"
    assert fragment in decision.detail


def test_secure_aggregation_not_required_accepts_either():
    relaxed = SitePolicy(dataset_id="d", epsilon_max=1.0, delta=1e-5)
    assert check_request(relaxed, TrainingConfig(secagg=False)) is None


def test_decline_converts_to_the_matching_error():
    assert isinstance(Decline("budget", "spent").as_error(), BudgetExceededError)
    error = Decline("policy", "too little noise").as_error()
    assert isinstance(error, PrivacyError)
    assert not isinstance(error, BudgetExceededError)
    assert str(error) == "too little noise"
