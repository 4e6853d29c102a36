"""fedvault's book-keeping DP-SGD step computes exactly what Opacus computes."""

import pytest
import torch
from torch.utils.data import TensorDataset

from fedvault.client import _fastdp
from fedvault.client.training import LocalSettings, dp_schedule, train_private
from fedvault.common.models import build_model

pytestmark = pytest.mark.privacy


def _data(n, d, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


def _run(
    engine,
    model_name,
    data,
    classes,
    *,
    sigma,
    clip,
    epochs=2,
    mu=0.0,
    batch=8,
    seed=11,
):
    torch.manual_seed(0)
    model = build_model(
        model_name, in_features=data.tensors[0].shape[1], num_classes=classes, hidden=16
    )
    local = LocalSettings(
        num_classes=classes,
        lr=0.2,
        epochs=epochs,
        batch_size=batch,
        proximal_mu=mu,
        dp_engine=engine,
    )
    plan = dp_schedule(len(data), batch).plan(noise_multiplier=sigma, epochs=epochs)
    torch.manual_seed(seed)  # the same Poisson batches and noise for both engines
    result = train_private(model, data, local, plan=plan, max_grad_norm=clip)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), result


@pytest.mark.parametrize(
    ("model_name", "classes", "sigma", "clip", "mu"),
    [
        ("mlp", 2, 1.3, 0.5, 0.0),  # clipping active, noise on
        ("mlp", 2, 0.0, 0.05, 0.0),  # clipping only
        ("mlp", 4, 0.8, 1.0, 0.0),  # softmax head
        ("logreg", 2, 2.0, 0.3, 0.1),  # logistic regression, FedProx pull
        ("mlp", 3, 1.0, 1e6, 0.0),  # no clipping at all
    ],
)
def test_same_update_as_opacus(model_name, classes, sigma, clip, mu):
    data = _data(37, 5, classes)
    fast, r_fast = _run(
        "auto", model_name, data, classes, sigma=sigma, clip=clip, mu=mu
    )
    slow, r_slow = _run(
        "opacus", model_name, data, classes, sigma=sigma, clip=clip, mu=mu
    )
    assert (r_fast.steps, r_fast.sample_rate) == (r_slow.steps, r_slow.sample_rate)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert r_fast.loss == pytest.approx(r_slow.loss, rel=1e-4)


def test_empty_batches_are_noise_steps_as_in_opacus():
    data = _data(3, 4, 2)  # q = 1 / ceil(3/1) = 1/3: many empty Poisson batches
    fast, r_fast = _run("auto", "mlp", data, 2, sigma=1.0, clip=1.0, batch=1, epochs=5)
    slow, r_slow = _run(
        "opacus", "mlp", data, 2, sigma=1.0, clip=1.0, batch=1, epochs=5
    )
    assert r_fast.steps == r_slow.steps == 15
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_empty_batches_take_the_fedprox_pull_as_in_opacus():
    data = _data(3, 4, 2)
    kwargs = {"sigma": 1.0, "clip": 1.0, "batch": 1, "epochs": 5, "mu": 0.1}
    fast, r_fast = _run("auto", "mlp", data, 2, **kwargs)
    slow, r_slow = _run("opacus", "mlp", data, 2, **kwargs)
    assert r_fast.steps == r_slow.steps == 15
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_only_plain_mlps_take_the_fast_path():
    assert _fastdp.supports(build_model("mlp", in_features=3, num_classes=2))
    assert _fastdp.supports(build_model("logreg", in_features=3, num_classes=5))
    conv = torch.nn.Sequential(
        torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 1)
    )
    assert not _fastdp.supports(conv)
    assert not _fastdp.supports(torch.nn.Linear(3, 1))
    norm = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    assert not _fastdp.supports(norm)


def _tied():
    torch.manual_seed(0)
    shared = torch.nn.Linear(6, 6)
    return torch.nn.Sequential(
        shared, torch.nn.ReLU(), shared, torch.nn.ReLU(), torch.nn.Linear(6, 1)
    )


def _frozen():
    torch.manual_seed(0)
    model = build_model("mlp", in_features=6, num_classes=2, hidden=16)
    model[0].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("make", [_tied, _frozen], ids=["tied", "frozen"])
def test_tied_or_frozen_layers_take_the_opacus_path(monkeypatch, make):
    """A Linear used twice sums two per-sample gradients before clipping, and
    Opacus neither clips nor noises a frozen parameter: the fast step does neither,
    so such models must train through Opacus' own engine."""
    from fedvault.client import training

    taken = []
    for name in ("_fast_engine", "_opacus_engine"):
        real = getattr(training, name)

        def spy(*args, _real=real, _name=name):
            taken.append(_name)
            return _real(*args)

        monkeypatch.setattr(training, name, spy)
    data = _data(40, 6, 2)
    local = LocalSettings(num_classes=2, lr=0.2, epochs=1, batch_size=8)
    plan = dp_schedule(len(data), 8).plan(noise_multiplier=1.0, epochs=1)
    model = make()
    frozen = [p.detach().clone() for p in model.parameters() if not p.requires_grad]
    torch.manual_seed(3)
    train_private(model, data, local, plan=plan, max_grad_norm=0.5)
    assert taken == ["_opacus_engine"]
    kept = [p for p in model.parameters() if not p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(frozen, kept, strict=True))


def _image_data(n, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


def _run_cnn(engine, data, classes, *, sigma, clip, momentum, batch=8, epochs=2):
    from fedvault.common.model_zoo import InputSpec, prepare_for_dp

    torch.manual_seed(0)
    model = build_model(
        "cnn", input_spec=InputSpec.image(1, 8, 8), num_classes=classes, hidden=16
    )
    model = prepare_for_dp(model)[0]
    local = LocalSettings(
        num_classes=classes,
        lr=0.2,
        momentum=momentum,
        epochs=epochs,
        batch_size=batch,
        dp_engine=engine,
    )
    plan = dp_schedule(len(data), batch).plan(noise_multiplier=sigma, epochs=epochs)
    torch.manual_seed(11)
    result = train_private(model, data, local, plan=plan, max_grad_norm=clip)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), result


@pytest.mark.parametrize(
    ("classes", "sigma", "clip", "momentum"),
    [
        (10, 1.0, 0.5, 0.9),  # the cnn's defaults: momentum, clipping, noise
        (2, 0.0, 0.05, 0.0),  # binary head, clipping only
        (3, 0.0, 1e6, 0.5),  # no clipping at all
        (4, 2.0, 1.0, 0.0),  # plain SGD, noise
    ],
)
def test_cnn_layer_step_same_update_as_opacus(classes, sigma, clip, momentum):
    """Conv2d, GroupNorm and Linear per-sample gradients, their clipping, noise
    and the momentum step: fedvault's layer-wise step equals Opacus' engine."""
    data = _image_data(37, classes)
    fast, r_fast = _run_cnn(
        "auto", data, classes, sigma=sigma, clip=clip, momentum=momentum
    )
    slow, r_slow = _run_cnn(
        "opacus", data, classes, sigma=sigma, clip=clip, momentum=momentum
    )
    assert r_fast.steps == r_slow.steps
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert r_fast.loss == pytest.approx(r_slow.loss, rel=1e-4)


def test_cnn_empty_batches_are_noise_steps_as_in_opacus():
    data = _image_data(3, 3)
    kwargs = {"sigma": 1.0, "clip": 1.0, "momentum": 0.9, "batch": 1, "epochs": 5}
    fast, r_fast = _run_cnn("auto", data, 3, **kwargs)
    slow, r_slow = _run_cnn("opacus", data, 3, **kwargs)
    assert r_fast.steps == r_slow.steps == 15
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_which_models_take_the_layer_wise_step():
    from fedvault.client import _fastdp_layers
    from fedvault.common.model_zoo import InputSpec

    cnn = build_model("cnn", input_spec=InputSpec.image(1, 8, 8), num_classes=10)
    assert _fastdp_layers.supports(cnn)
    assert _fastdp_layers.supports(build_model("mlp", in_features=3, num_classes=2))
    nn = torch.nn
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten())
    same = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten())
    layer_norm = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    for model in (grouped, same, layer_norm, _tied(), _frozen()):
        assert not _fastdp_layers.supports(model)
