"""Opacus-style properties of fedvault's local DP-SGD trainer."""

import dataclasses
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from fedvault.client.training import (
    LocalSettings,
    dp_schedule,
    train_plain,
    train_private,
)
from fedvault.common.errors import PrivacyError
from fedvault.common.models import build_model
from fedvault.common.privacy import Step

pytestmark = pytest.mark.privacy


def _data(n=24, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def _model(seed=0, d=6):
    torch.manual_seed(seed)
    return build_model("mlp", in_features=d, num_classes=2, hidden=16)


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _plan(data, local, sigma):
    schedule = dp_schedule(len(data), local.batch_size)
    return schedule.plan(noise_multiplier=sigma, epochs=local.epochs)


def test_schedule_is_what_the_loader_runs():
    for n, b in [(77, 16), (100, 10), (5, 32), (1000, 7)]:
        s = dp_schedule(n, b)
        assert s.steps_per_epoch == math.ceil(n / b)
        assert s.sample_rate == pytest.approx(1 / math.ceil(n / b))


def test_no_noise_and_no_clipping_equals_plain_training():
    data = _data()
    local = LocalSettings(num_classes=2, lr=0.3, epochs=1, batch_size=len(data))
    private, plain = _model(), _model()
    torch.manual_seed(1)
    result = train_private(
        private, data, local, plan=_plan(data, local, 0.0), max_grad_norm=1e6
    )
    train_plain(plain, data, local)
    assert result.steps == 1 and result.sample_rate == 1.0
    torch.testing.assert_close(_flat(private), _flat(plain), rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_update():
    data = _data()
    clip, lr = 0.01, 1.0
    local = LocalSettings(num_classes=2, lr=lr, epochs=1, batch_size=len(data))
    model = _model()
    before = _flat(model)
    torch.manual_seed(2)
    train_private(model, data, local, plan=_plan(data, local, 0.0), max_grad_norm=clip)
    # mean of per-sample gradients each clipped to norm <= C has norm <= C
    assert torch.linalg.norm(_flat(model) - before) <= lr * clip * (1 + 1e-5)


def test_noise_has_the_right_scale():
    data = _data(n=20, d=40)
    sigma, clip, lr = 5.0, 1.0, 1.0
    local = LocalSettings(num_classes=2, lr=lr, epochs=1, batch_size=len(data))
    torch.manual_seed(0)
    model = build_model("mlp", in_features=40, num_classes=2, hidden=128)
    before = _flat(model)
    torch.manual_seed(3)
    train_private(
        model, data, local, plan=_plan(data, local, sigma), max_grad_norm=clip
    )
    delta = _flat(model) - before
    # Gaussian noise std sigma*C on the summed gradient, divided by the expected
    # batch size (q*n = 20); the clipped signal (norm <= C) is negligible here.
    expected = lr * sigma * clip / 20
    assert delta.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(delta.mean().item()) < 4 * expected / math.sqrt(delta.numel())


def test_a_plan_the_loader_would_not_run_trains_nothing():
    data = _data()
    local = LocalSettings(num_classes=2, lr=0.3, epochs=1, batch_size=8)
    wrong = Step(noise_multiplier=1.0, sample_rate=0.5, steps=3)  # the loader's: 1/3
    for engine in ("auto", "opacus"):
        model = _model()
        before = _flat(model)
        with pytest.raises(PrivacyError, match="differs from the planned"):
            train_private(
                model,
                data,
                dataclasses.replace(local, dp_engine=engine),
                plan=wrong,
                max_grad_norm=1.0,
            )
        assert torch.equal(_flat(model), before)


@pytest.mark.parametrize("private", [False, True])
def test_a_regression_trains_on_the_loss_the_run_names(private):
    """`regression-loss = "huber"` reaches the step a site runs, private or not: one
    full-batch step from a zero linear model on targets of 10 moves the weight by
    lr * 2 * 10 under MSE, by lr * 1 under Huber (its gradient is capped at 1)."""
    x = torch.ones(8, 1)
    data = TensorDataset(x, torch.full((8,), 10.0))
    moved = {}
    for loss in ("mse", "huber"):
        local = LocalSettings(
            num_classes=0,
            task="regression",
            regression_loss=loss,
            lr=0.01,
            epochs=1,
            batch_size=len(data),
        )
        model = build_model("logreg", in_features=1, task="regression")
        torch.nn.init.zeros_(model[0].weight)
        torch.nn.init.zeros_(model[0].bias)
        if private:
            plan = _plan(data, local, 0.0)
            train_private(model, data, local, plan=plan, max_grad_norm=1e6)
        else:
            train_plain(model, data, local)
        moved[loss] = float(model[0].weight.detach())
    assert moved["mse"] == pytest.approx(0.2, rel=1e-5)
    assert moved["huber"] == pytest.approx(0.01, rel=1e-5)
