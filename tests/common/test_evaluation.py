"""Metrics per task: classification as before, MAE / RMSE / R² for regression."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score
from torch import nn

from fedvault.common.evaluation import evaluate


class _Fixed(nn.Module):
    """Returns the outputs it was given, in order, whatever the input."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        index = x[:, 0].long()
        return self.outputs[index]


def _rows(n):
    return torch.arange(n, dtype=torch.float32).unsqueeze(1)


def test_binary_metrics_are_unchanged():
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    labels = torch.tensor([1, 0, 0, 0])
    m = evaluate(_Fixed(logits), _rows(4), labels, num_classes=2)
    bce = nn.BCEWithLogitsLoss()(logits, labels.float().unsqueeze(1))
    assert m.loss == pytest.approx(float(bce))
    assert m.accuracy == pytest.approx(0.75)
    assert m.auc == pytest.approx(roc_auc_score(labels, torch.sigmoid(logits[:, 0])))
    assert m.task == "binary" and m.examples == 4
    assert math.isnan(m.mae) and math.isnan(m.r2)
    assert set(m.values()) == {"loss", "accuracy", "auc"}


def test_batches_do_not_change_the_metrics():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(50, 3), torch.randint(0, 4, (50,))
    whole = evaluate(model, x, y, num_classes=4)
    batched = evaluate(model, x, y, num_classes=4, batch_size=7)
    assert whole.task == "multiclass"
    assert whole.loss == pytest.approx(batched.loss)
    assert whole.accuracy == batched.accuracy
    assert whole.auc == pytest.approx(batched.auc)


def _regress(predicted, truth, **kwargs):
    rows = _rows(len(truth))
    return evaluate(
        _Fixed(predicted), rows, truth, num_classes=0, task="regression", **kwargs
    )


def test_regression_metrics_match_scikit_learn_in_original_units():
    predicted = torch.tensor([[0.5], [-1.0], [2.0], [0.0], [1.0]])
    truth = torch.tensor([0.0, -1.5, 2.5, 0.2, 0.8])
    mean, std = 100.0, 20.0
    m = _regress(predicted, truth, target_scale=(mean, std))
    guess = predicted[:, 0].numpy() * std + mean
    real = truth.numpy() * std + mean
    assert m.task == "regression" and m.examples == 5
    assert m.mae == pytest.approx(mean_absolute_error(real, guess))
    assert m.rmse == pytest.approx(float(np.sqrt(((real - guess) ** 2).mean())))
    assert m.r2 == pytest.approx(r2_score(real, guess))
    assert m.loss == pytest.approx(float(((predicted[:, 0] - truth) ** 2).mean()))
    assert math.isnan(m.accuracy) and math.isnan(m.auc)
    assert list(m.values()) == ["loss", "mae", "rmse", "r2"]


def test_huber_loss_is_reported_when_asked():
    predicted = torch.tensor([[10.0], [0.0]])
    truth = torch.tensor([0.0, 0.0])
    m = _regress(predicted, truth, regression_loss="huber")
    assert m.loss == pytest.approx((10.0 - 0.5) / 2)
    assert m.mae == pytest.approx(5.0)
