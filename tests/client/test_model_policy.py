"""A site trains only the models its policy lists (``[models]``): any other model,
or a plug-in whose installed code is not the approved one, is declined with reason
``policy`` at the edge of every handler, before data is read."""

import types
from pathlib import Path

import pytest

from fedvault.client.admission import Run, admit
from fedvault.client.model_policy import ModelPolicy, check_model, load_model_policy
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError
from fedvault.common.model_zoo import plugin_sha256

PLUGINS = Path(__file__).parents[1] / "common" / "plugins"
PRIVACY = '[privacy]\ndataset-id = "bc"\nepsilon-max = 3.0\ndelta = 1e-5\n'


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def _admit(tmp_path, policy: str, model: str):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "site.toml").write_text(PRIVACY + policy)
    context = types.SimpleNamespace(
        run_config=TrainingConfig(model=model).to_run_config(),
        node_config={"data": str(tmp_path / "rows.csv"), "state": str(state)},
    )
    return admit(context)[1]


def test_without_a_models_table_builtins_pass_and_plugins_are_declined(
    tmp_path, plugins
):
    assert isinstance(_admit(tmp_path, "", "cnn"), Run)
    decline = _admit(tmp_path, "", "mynets.nets:build")
    assert decline.reason == "policy"
    assert "not approved" in decline.detail


def test_an_approved_plugin_is_admitted_by_its_module_hash(tmp_path, plugins):
    digest = plugin_sha256("mynets.nets:build")
    table = f'[models.plugins]\n"mynets.nets:build" = "{digest}"\n'
    assert isinstance(_admit(tmp_path, table, "mynets.nets:build"), Run)
    changed = table.replace(digest, "0" * 64)
    decline = _admit(tmp_path, changed, "mynets.nets:build")
    assert decline.reason == "policy"
    assert "differs from the approved one" in decline.detail


def test_a_builtin_outside_the_accept_list_is_declined(tmp_path):
    decline = _admit(tmp_path, '[models]\naccept = ["mlp"]\n', "resnet18")
    assert (decline.reason, decline.detail) == (
        "policy",
        "model 'resnet18' is not among the site's models",
    )


@pytest.mark.parametrize(
    "table",
    [
        '[models]\naccept = ["vgg"]\n',
        '[models]\nplugins = { "a.b:c" = "short" }\n',
        "[models]\nallow = true\n",
    ],
)
def test_a_malformed_models_table_is_a_config_error(tmp_path, table):
    path = tmp_path / "site.toml"
    path.write_text(PRIVACY + table)
    with pytest.raises(ConfigError, match=r"\[models"):
        load_model_policy(path)


def test_a_plugin_not_installed_here_is_declined():
    policy = ModelPolicy(plugins=(("nowhere.nets:build", "0" * 64),))
    decline = check_model(policy, "nowhere.nets:build")
    assert decline is not None and decline.reason == "policy"
