import pytest
import torch

from fedvault.common.models import build_model, loss_fn, predict_proba, targets_for_loss


@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_binary_head_is_one_logit(name):
    model = build_model(name, in_features=7, num_classes=2)
    out = model(torch.zeros(4, 7))
    assert out.shape == (4, 1)
    proba = predict_proba(out, 2)
    assert proba.shape == (4, 2)
    assert torch.allclose(proba.sum(dim=1), torch.ones(4))


def test_multiclass_head_has_one_logit_per_class():
    model = build_model("mlp", in_features=5, num_classes=4, hidden=16)
    assert model[0].out_features == 16
    out = model(torch.randn(3, 5))
    assert out.shape == (3, 4)
    y = torch.tensor([0, 3, 1])
    loss = loss_fn(4)(out, targets_for_loss(y, 4))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_mlp_matches_the_seed_architecture():
    model = build_model("mlp", in_features=30, num_classes=2)
    layers = [type(m).__name__ for m in model]
    assert layers == ["Linear", "ReLU", "Linear"]
    assert model[0].out_features == 128


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_features": 0, "num_classes": 2}, "in_features"),
        ({"in_features": 3, "num_classes": 1}, "num_classes"),
    ],
)
def test_bad_shapes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("mlp", **kwargs)


def test_a_run_with_one_released_class_is_refused_in_one_line():
    """Under DP an undeclared class is released only above a noisy count: a
    small site's classes may all vanish but one, which no classifier fits."""
    from fedvault.common.errors import DataError
    from fedvault.common.models import build_run_model
    from fedvault.common.preprocessing import merge_summaries

    summary = {"rows": 90, "labels": {"digit0": 31}, "numeric": {}, "categorical": {}}
    prep = merge_summaries([summary | {"image-shape": [1, 8, 8]}], "label")
    with pytest.raises(DataError, match="name 1 class\\(es\\) of 'label'"):
        build_run_model("cnn", prep, hidden=8, dp=True)
