"""Augmentation multiplicity under Opacus: per-sample gradients of an example's
copies are averaged before clipping, so one example still moves the model by at
most the clipping norm."""

import copy

import pytest
import torch
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer
from torch import nn

from fedvault.client._augmult import augmented_step, average_copies
from fedvault.common.augment import Augmentation, augment_batch, repeat_targets
from fedvault.common.model_zoo import InputSpec
from fedvault.common.models import build_model, loss_fn, targets_for_loss

pytestmark = pytest.mark.privacy
MODES = ("hooks", "functorch", "ew")
AUG = Augmentation(rotation=20, scale=(0.9, 1.1), crop_padding=1, flip=True, copies=3)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return build_model("cnn", input_spec=InputSpec.image(1, 8, 8), num_classes=3)


def _batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loss(out, y):
    return loss_fn(3)(out, targets_for_loss(y, 3))


def _grad(model, x, y):
    """The plain gradient of one example's loss, flattened."""
    model.zero_grad()
    _loss(model(x.unsqueeze(0)), y.unsqueeze(0)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _rows(module):
    return torch.cat([p.grad_sample.flatten(1) for p in module.parameters()], dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_averaged_rows_are_the_mean_of_each_examples_copy_gradients(mode):
    model = _cnn()
    reference = copy.deepcopy(model)
    x, y = _batch()
    torch.manual_seed(5)
    copies = augment_batch(x, AUG)
    targets = repeat_targets(y, AUG.copies)
    module = wrap_model(model, grad_sample_mode=mode)
    _loss(module(copies), targets).backward()
    average_copies(module, AUG.copies)
    rows = _rows(module)
    assert rows.shape[0] == len(x)
    for i in range(len(x)):
        mean = torch.stack(
            [_grad(reference, copies[i * 3 + k], targets[i * 3 + k]) for k in range(3)]
        ).mean(0)
        assert torch.allclose(rows[i], mean, atol=1e-5)


def test_identical_copies_give_the_gradients_of_one_copy():
    x, y = _batch()
    plain = wrap_model(_cnn(), grad_sample_mode="hooks")
    _loss(plain(x), y).backward()
    tripled = wrap_model(_cnn(), grad_sample_mode="hooks")
    same = Augmentation(copies=3)
    _loss(tripled(augment_batch(x, same)), repeat_targets(y, 3)).backward()
    average_copies(tripled, 3)
    assert torch.allclose(_rows(tripled), _rows(plain), atol=1e-6)


def _private(mode, *, max_grad_norm, noise=0.0, expected=1):
    module = wrap_model(_cnn(), grad_sample_mode=mode)
    optimizer = DPOptimizer(
        torch.optim.SGD(module.parameters(), lr=0.0),
        noise_multiplier=noise,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected,
    )
    return module, optimizer


def _grad_norm(module):
    return float(torch.cat([p.grad.flatten() for p in module.parameters()]).norm())


@pytest.mark.parametrize("mode", MODES)
def test_one_example_moves_the_model_by_at_most_the_clipping_norm(mode):
    clip = 1e-3
    x, y = _batch(n=1)
    module, optimizer = _private(mode, max_grad_norm=clip)
    augmented_step(module, optimizer, _loss, AUG)(x, y)
    assert _grad_norm(module) == pytest.approx(clip, rel=1e-4)
    # counting the copies as examples instead would let one example weigh 3 C
    module, optimizer = _private(mode, max_grad_norm=clip)
    optimizer.zero_grad()
    torch.manual_seed(0)
    _loss(module(augment_batch(x, AUG)), repeat_targets(y, 3)).backward()
    optimizer.step()
    assert _grad_norm(module) > 1.5 * clip


def test_without_noise_or_clipping_it_is_sgd_on_the_mean_loss_over_copies():
    x, y = _batch(n=4)
    module, optimizer = _private("hooks", max_grad_norm=1e9, expected=4)
    torch.manual_seed(9)
    loss = augmented_step(module, optimizer, _loss, AUG)(x, y)
    torch.manual_seed(9)
    copies = augment_batch(x, AUG)
    reference = _cnn()
    expected_loss = _loss(reference(copies), repeat_targets(y, 3))
    expected_loss.backward()
    for p, q in zip(module.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    assert loss == pytest.approx(float(expected_loss.detach()) * 4)


def test_an_empty_poisson_batch_is_a_noise_only_step():
    module, optimizer = _private("hooks", max_grad_norm=1.0, noise=1.0, expected=4)
    before = [p.detach().clone() for p in module.parameters()]
    x, y = _batch(n=4)
    loss = augmented_step(module, optimizer, _loss, AUG)(x[:0], y[:0])
    assert loss == 0.0
    assert _grad_norm(module) > 0
    assert all(
        torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True)
    )


def test_rows_that_do_not_split_into_copies_are_refused():
    layer = nn.Linear(2, 1)
    layer.weight.grad_sample = torch.zeros(5, 1, 2)
    with pytest.raises(ValueError, match="5 per-sample rows for 2 copies"):
        average_copies(layer, 2)
