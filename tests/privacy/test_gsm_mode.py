"""The site's choice of Opacus' grad-sample mode: the fastest mode whose update
equals DP-SGD's by definition (each row's own gradient, clipped), measured
without touching the model or the round's random numbers; a model no mode gets
right is refused; an empty Poisson batch steps the same in every mode."""

import copy
import warnings

import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedvault.client import _gsm_mode
from fedvault.client._gsm_mode import MODES, noise_only_step
from fedvault.client.training import LocalSettings, grad_sample_mode_for
from fedvault.common.augment import Augmentation
from fedvault.common.errors import ConfigError
from fedvault.common.model_zoo import InputSpec
from fedvault.common.models import build_model

pytestmark = pytest.mark.privacy


class _Scale(nn.Module):
    """A per-feature scale: hooks and functorch take it, expanded weights cannot."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.scale


class _Twice(nn.Module):
    """The same layers as a plain MLP, used differently in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.h = nn.Linear(6, 1)

    def forward(self, x):
        return self.h(torch.relu(self.a(torch.relu(self.a(x)))))


def _rows(n=40, features=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, features, generator=g), torch.randint(0, 2, (n,), generator=g)
    )


def _choose(model, data, local):
    return grad_sample_mode_for(model, data, local, max_grad_norm=1.0)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(_gsm_mode, "_chosen", {})


def test_a_mode_that_cannot_run_the_model_is_left_out_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), _Scale(8), nn.ReLU(), nn.Linear(8, 1))
    before = copy.deepcopy(model.state_dict())
    local = LocalSettings(num_classes=2, lr=0.1, momentum=0.9, epochs=1, batch_size=16)
    rng = torch.get_rng_state()

    choice = _choose(model, _rows(), local)

    assert choice.left_out == {"ew": "fails"}
    assert set(choice.seconds) == {"hooks", "functorch"}
    assert choice.mode == min(choice.seconds, key=choice.seconds.__getitem__)
    assert all(s > 0 for s in choice.seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_every_mode_that_agrees_is_timed_with_augmentation_too():
    torch.manual_seed(0)
    model = build_model("cnn", input_spec=InputSpec.image(1, 8, 8), num_classes=3)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.rand(12, 1, 8, 8, generator=g), torch.randint(0, 3, (12,), generator=g)
    )
    augmentation = Augmentation(rotation=10, crop_padding=1, copies=2)
    local = LocalSettings(
        num_classes=3, lr=0.1, epochs=1, batch_size=8, augmentation=augmentation
    )

    choice = _choose(model, data, local)

    assert choice.left_out == {}
    assert set(choice.seconds) == set(MODES)


def test_hooks_is_left_out_where_it_is_wrong():
    # Opacus' hooks ignore a convolution's padding mode; ew and functorch do not
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"),
        nn.Flatten(),
        nn.Linear(72, 1),
    )
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.rand(16, 1, 6, 6, generator=g), torch.randint(0, 2, (16,), generator=g)
    )
    local = LocalSettings(num_classes=2, lr=0.1, epochs=1, batch_size=16)

    choice = _choose(model, data, local)

    assert choice.left_out == {"hooks": "differs from the per-row gradient"}
    assert choice.mode in {"ew", "functorch"}


class _Centre(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class _FunctionalBatchNorm(nn.Module):
    def forward(self, x):
        return torch.nn.functional.batch_norm(x, None, None, training=True)


@pytest.mark.parametrize("layer", [_Centre, _FunctionalBatchNorm])
@pytest.mark.parametrize("augmented", [False, True])
def test_a_model_that_mixes_a_batchs_rows_is_refused(layer, augmented):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), layer(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    )
    augmentation = Augmentation(rotation=10, copies=2) if augmented else None
    local = LocalSettings(
        num_classes=3, lr=0.1, epochs=1, batch_size=16, augmentation=augmentation
    )
    with pytest.raises(ConfigError, match="depends on the other rows of its batch"):
        _choose(model, data, local)


def test_a_model_no_mode_gets_right_is_refused_without_quoting_errors():
    # a weight also used outside its layer: every mode misses that use
    local = LocalSettings(num_classes=2, lr=0.1, epochs=1, batch_size=16)
    with pytest.raises(ConfigError, match="no Opacus grad-sample mode") as refused:
        _choose(_Tied(), _rows(), local)
    message = str(refused.value)
    assert "(hooks differs from the per-row gradient, ew fails, functorch " in message
    assert "\n" not in message and "Expanded Weights" not in message
    assert _gsm_mode._chosen == {}


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6, bias=False)
        self.h = nn.Linear(6, 1)

    def forward(self, x):
        z = torch.relu(self.a(x))
        return self.h(torch.nn.functional.linear(z, self.a.weight.t()))


def test_dropout_is_off_for_the_comparison_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    local = LocalSettings(num_classes=2, lr=0.1, epochs=1, batch_size=16)

    choice = _choose(model, _rows(), local)

    assert choice.left_out == {} and set(choice.seconds) == set(MODES)
    assert model[2].training


def test_the_choice_is_kept_per_architecture_and_forward(monkeypatch):
    local = LocalSettings(num_classes=2, lr=0.1, epochs=1, batch_size=16)
    data = _rows()
    plain = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 1))
    first = _choose(plain, data, local)

    assert _choose(copy.deepcopy(plain), data, local) is first
    assert len(_gsm_mode._chosen) == 1
    # the kept mode is checked against the truth again: a model it gets wrong
    # (same signature, as the cache sees it) is measured afresh
    with monkeypatch.context() as m:
        m.setattr(
            _gsm_mode,
            "_truth",
            lambda model, *_: [torch.zeros_like(p) for p in model.parameters()],
        )
        with pytest.raises(ConfigError):
            _choose(copy.deepcopy(plain), data, local)
    # Same layer types and parameter shapes, another forward: measured again.
    _choose(_Twice(), data, local)
    assert len(_gsm_mode._chosen) == 2


def test_same_allows_float_noise_not_a_missing_term():
    a = [torch.ones(3), torch.full((2,), 0.5)]
    assert _gsm_mode._same([t * 1.02 for t in a], a)  # 2%: float32 on deep nets
    assert not _gsm_mode._same([torch.ones(3), torch.full((2,), 0.3)], a)  # 40%
    # a parameter whose gradient is tiny is judged against the whole gradient
    assert _gsm_mode._same([torch.ones(3), torch.full((2,), 1e-3)], [a[0], a[1] * 0])
    assert not _gsm_mode._same([torch.ones(3), torch.full((2,), 0.2)], [a[0], a[1] * 0])
    assert not _gsm_mode._same([torch.ones(3)], a)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_batch_steps_as_opacus_hooks_step_it(mode):
    """noise_only_step in any mode = the hooks mode's backward pass on no rows:
    the same noise (same seed) and scaling, nothing clipped."""

    def private(grad_sample_mode):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1))
        data = _rows()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PrivacyEngine(accountant="rdp").make_private(
                module=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                data_loader=DataLoader(data, batch_size=10),
                noise_multiplier=1.3,
                max_grad_norm=1.0,
                grad_sample_mode=grad_sample_mode,
            )

    hooks_model, hooks_opt, _ = private("hooks")
    hooks_opt.zero_grad(set_to_none=True)
    hooks_model(torch.zeros(0, 6)).sum().mul(0.0).backward()
    torch.manual_seed(7)
    hooks_opt.step()

    model, optimizer, _ = private(mode)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    noise_only_step(optimizer)

    moved = [p.detach() - s for p, s in zip(model.parameters(), start, strict=True)]
    assert all(m.abs().sum() > 0 for m in moved)  # the noise was added
    for p, q in zip(model.parameters(), hooks_model.parameters(), strict=True):
        assert torch.equal(p, q)
