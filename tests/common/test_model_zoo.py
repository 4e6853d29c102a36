"""Built-in image models, plug-in factories, regression heads and the DP check."""

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from fedvault.common.errors import ConfigError
from fedvault.common.model_zoo import (
    InputSpec,
    plugin_sha256,
    prepare_for_dp,
    resolve_factory,
)
from fedvault.common.models import (
    build_model,
    loss_fn,
    output_units,
    per_sample_loss,
    targets_for_loss,
)

PLUGINS = Path(__file__).parent / "plugins"
DIGITS = InputSpec.image(1, 8, 8)


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def _norms(model):
    return {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}


@pytest.mark.parametrize(
    ("spec", "batch"),
    [(DIGITS, (5, 1, 8, 8)), (InputSpec.image(3, 28, 20), (2, 3, 28, 20))],
)
def test_cnn_maps_images_to_one_logit_per_class(spec, batch):
    model = build_model("cnn", input_spec=spec, num_classes=10)
    assert model(torch.rand(batch)).shape == (batch[0], 10)
    assert _norms(model) == {"GroupNorm"}


@pytest.mark.parametrize(("size", "first_kernel"), [(32, 3), (64, 7)])
def test_resnet18_takes_the_input_channels_and_has_groupnorm(size, first_kernel):
    spec = InputSpec.image(1, size, size)
    model = build_model("resnet18", input_spec=spec, num_classes=4)
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (first_kernel, first_kernel)
    assert model.fc.out_features == 4
    assert _norms(model) == {"GroupNorm"}
    assert model(torch.rand(2, 1, size, size)).shape == (2, 4)
    fixed, notes = prepare_for_dp(model)
    assert fixed is model and notes == ()


def test_models_refuse_the_other_kind_of_input():
    with pytest.raises(ConfigError, match="'cnn' takes images"):
        build_model("cnn", in_features=5, num_classes=2)
    with pytest.raises(ConfigError, match="'mlp' takes tables"):
        build_model("mlp", input_spec=DIGITS, num_classes=2)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", in_features=5, num_classes=2)


@pytest.mark.parametrize(
    "kwargs",
    [{"features": 3, "channels": 1, "height": 2, "width": 2}, {"channels": 1}, {}],
)
def test_an_input_spec_is_a_table_or_an_image(kwargs):
    with pytest.raises(ConfigError, match="either features"):
        InputSpec(**kwargs)


def test_regression_head_is_one_value_with_mse_or_huber():
    assert output_units(0, task="regression") == 1
    model = build_model("mlp", in_features=4, task="regression", hidden=8)
    out = model(torch.randn(6, 4))
    y = torch.randn(6)
    target = targets_for_loss(y, 0, task="regression")
    assert out.shape == target.shape == (6, 1)
    mse = loss_fn(0, task="regression")(out, target)
    assert torch.isclose(mse, ((out.squeeze(1) - y) ** 2).mean())
    for kind in ("mse", "huber"):
        per_sample = per_sample_loss(0, task="regression", regression_loss=kind)
        whole = loss_fn(0, task="regression", regression_loss=kind)
        assert per_sample(out, target).shape == (6,)
        assert torch.isclose(per_sample(out, target).mean(), whole(out, target))
    huge = torch.full((1, 1), 100.0)
    huber = loss_fn(0, task="regression", regression_loss="huber")
    assert huber(huge, torch.zeros(1, 1)) == pytest.approx(99.5)


def test_a_plugin_resolves_and_its_batchnorm_is_fixed_and_said(plugins):
    model = build_model("mynets.nets:build", input_spec=DIGITS, num_classes=3)
    assert model(torch.rand(4, 1, 8, 8)).shape == (4, 3)
    fixed, notes = prepare_for_dp(model)
    assert notes == ("layer '1': BatchNorm2d replaced by GroupNorm",)
    assert _norms(fixed) == {"GroupNorm"} and fixed.training
    tabular = build_model("mynets.nets:build", in_features=5, task="regression")
    assert tabular(torch.rand(3, 5)).shape == (3, 1)


def test_the_plugin_hash_is_that_of_its_module_file(plugins):
    source = (PLUGINS / "mynets" / "nets.py").read_bytes()
    assert plugin_sha256("mynets.nets:build") == hashlib.sha256(source).hexdigest()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mynets.nets", "package.module:factory"),
        ("mynets/nets:build", "package.module:factory"),
        ("nowhere.nets:build", "module 'nowhere' is not installed here"),
        ("mynets.broken:build", "importing mynets.broken failed .RuntimeError"),
        ("mynets.nets:missing", "has no callable missing"),
        ("mynets.nets:NOT_CALLABLE", "has no callable NOT_CALLABLE"),
        ("mynets.nets:not_a_module", "returned str, not a torch.nn.Module"),
        ("mynets.nets:wrong_width", r"should have shape \(2, 3\), got \(2, 4\)"),
        (
            "mynets.nets:raises",
            r"^model 'mynets.nets:raises': the factory raised RuntimeError: boom: "
            r"my factory failed \(it is called as factory\(spec, outputs\)",
        ),
        ("mynets.nets:takes_nothing", "the factory raised TypeError: "),
        (
            "mynets.nets:fails_without_a_message",
            r"fails on input of shape \(2, 4\): RuntimeError: RuntimeError$",
        ),
    ],
)
def test_a_plugin_that_cannot_be_used_gets_one_line(plugins, name, message):
    with pytest.raises(ConfigError, match=message) as caught:
        build_model(name, in_features=4, num_classes=3)
    assert "\n" not in str(caught.value)


def test_resolving_reads_the_same_factory_on_every_side(plugins):
    assert resolve_factory("mynets.nets:build") is resolve_factory("mynets.nets:build")


def test_a_layer_opacus_cannot_privatize_is_named(plugins):
    model = build_model("mynets.nets:with_running_stats", in_features=4, num_classes=2)
    with pytest.raises(ConfigError, match=r"^layer '1' \(_Running\) cannot be trained"):
        prepare_for_dp(model)


def test_a_buffer_that_would_leave_a_site_is_refused(plugins):
    """A layer without weights that keeps a statistic of what it sees (saved with
    the model, so sent back with every update) is refused; a constant kept as a
    non-persistent buffer never leaves a site and is fine."""
    model = build_model("mynets.nets:with_a_tracked_mean", in_features=4, num_classes=2)
    with pytest.raises(
        ConfigError,
        match=r"^layer '0' \(_Tracking\) cannot be trained with DP-SGD: its buffer "
        r"'0.mean' would leave each site outside DP-SGD",
    ):
        prepare_for_dp(model)
    constant = build_model("mynets.nets:with_a_constant", in_features=4, num_classes=2)
    fixed, _ = prepare_for_dp(constant)
    assert "scale" not in fixed.state_dict()


def test_a_model_class_local_to_its_factory_gets_a_hint(plugins):
    model = build_model("mynets.nets:local_lstm", in_features=4, num_classes=2)
    with pytest.raises(
        ConfigError, match=r"define the model's classes at module level"
    ):
        prepare_for_dp(model)


def test_fixable_recurrent_layers_are_replaced_and_said():
    fixed, notes = prepare_for_dp(nn.Sequential(nn.LSTM(3, 4)))
    assert notes == ("layer '0': LSTM replaced by DPLSTM",)
    assert type(fixed[0]).__name__ == "DPLSTM"


def test_a_fixed_model_trains_under_opacus(plugins):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model, _ = prepare_for_dp(
        build_model("mynets.nets:build", input_spec=DIGITS, num_classes=2)
    )
    data = TensorDataset(torch.rand(16, 1, 8, 8), torch.randint(0, 2, (16,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=8),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    x, y = next(iter(loader))
    loss_fn(2)(private(x), targets_for_loss(y, 2)).backward()
    optimizer.step()
    assert all(p.grad is not None for p in private.parameters())


def test_resnet18_gets_per_sample_gradients_under_opacus():
    from opacus.grad_sample.utils import wrap_model

    torch.manual_seed(0)
    spec = InputSpec.image(1, 16, 16)
    model, notes = prepare_for_dp(
        build_model("resnet18", input_spec=spec, num_classes=3)
    )
    assert notes == ()
    module = wrap_model(model, grad_sample_mode="hooks")
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 2])
    loss_fn(3)(module(x), targets_for_loss(y, 3)).backward()
    rows = [p.grad_sample for p in module.parameters()]
    assert all(r.shape[0] == 2 for r in rows)
    assert len(rows) == len(list(model.parameters()))


def test_in_place_activations_are_made_out_of_place_and_said():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    fixed, notes = prepare_for_dp(model)
    assert notes == ("layer '1': in-place ReLU made out-of-place",)
    assert fixed[1].inplace is False


def test_resnet18_is_torchvisions_with_the_groupnorm_opacus_would_fix_in():
    from opacus.validators import ModuleValidator

    from fedvault.common._torchvision import torchvision

    resnet18 = torchvision().models.resnet18
    ours = build_model("resnet18", input_spec=InputSpec.image(3, 64, 64), num_classes=4)
    theirs = ModuleValidator.fix(resnet18(num_classes=4))
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    groups = [m.num_groups for m in ours.modules() if isinstance(m, nn.GroupNorm)]
    assert groups == [
        m.num_groups for m in theirs.modules() if isinstance(m, nn.GroupNorm)
    ]
