"""The DeepLOB-family model: a faithful DeepLOB, and every multi-asset strategy trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bmlt_assets.core.config import ModelConfig
from bmlt_assets.core.models import DeepLOBTrunk, OrderBookClassifier, parameter_count


def test_single_asset_deeplob_matches_the_published_parameter_count() -> None:
    # Zhang, Zohren & Roberts (2019), DeepLOB, IEEE Trans. Signal Processing 67(11); the
    # authors' PyTorch implementation (github.com/zcakhaa/DeepLOB-Deep-Convolutional-Neural-
    # Networks-for-Limit-Order-Books, run_train_pytorch.ipynb) prints 143,907 parameters for
    # input (1, 100, 40) and 3 classes: conv blocks 8,544 + 10,528 + 18,720, inception 39,872,
    # LSTM(192, 64) 66,048, linear head 195.
    model = OrderBookClassifier(
        ModelConfig(multi_asset="stacked", temporal="none"), levels=10, assets=1, horizons=1, classes=3
    )
    assert parameter_count(model) == 143_907
    assert parameter_count(model.lstm) == 66_048
    out = model(torch.randn(2, 100, 10, 4, 1))
    assert out.shape == (2, 1, 3)
    # The trunk shortens the sequence by 18 steps, as in the paper (100 -> 82).
    features = model.trunk(torch.randn(2, 1, 100, 40))
    assert features.shape == (2, 82, 192)


@pytest.mark.parametrize("multi_asset", ["stacked", "branches", "attention"])
@pytest.mark.parametrize("temporal", ["cyclical", "embedding", "none"])
def test_each_strategy_trains_a_step_and_outputs_every_horizon(multi_asset: str, temporal: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        multi_asset=multi_asset, temporal=temporal, conv_channels=4, inception_channels=4, lstm_hidden=8
    )
    model = OrderBookClassifier(config, levels=5, assets=3, horizons=2, classes=8)
    windows = torch.randn(16, 24, 5, 4, 3)
    times = torch.stack([torch.rand(16), torch.randint(0, 7, (16,)).float()], dim=1)
    target = torch.randint(0, 8, (16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(windows, times)
    assert logits.shape == (16, 2, 8)
    loss = sum(torch.nn.functional.cross_entropy(logits[:, h], target[:, h]) for h in range(2))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    probabilities = torch.softmax(model(windows, times), dim=-1)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(16, 2))


@pytest.mark.parametrize("multi_asset", ["branches", "attention"])
def test_per_asset_strategies_share_the_trunk_across_assets(multi_asset: str) -> None:
    config = ModelConfig(multi_asset=multi_asset, conv_channels=4, inception_channels=4, lstm_hidden=8)
    one = OrderBookClassifier(config, levels=5, assets=1, horizons=1, classes=3)
    three = OrderBookClassifier(config, levels=5, assets=3, horizons=1, classes=3)
    assert parameter_count(one.trunk) == parameter_count(three.trunk)
    if multi_asset == "attention":  # pooled across assets: the LSTM does not grow with K
        assert parameter_count(one.lstm) == parameter_count(three.lstm)


def test_attention_pooling_is_invariant_to_the_order_of_asset_tokens() -> None:
    torch.manual_seed(0)
    config = ModelConfig(multi_asset="attention", temporal="none", conv_channels=4, inception_channels=4, lstm_hidden=8)
    model = OrderBookClassifier(config, levels=5, assets=3, horizons=1, classes=3).eval()
    tokens = torch.randn(6, 3, 6)
    query = model.pool_query.expand(6, -1, -1)
    pooled, _ = model.pool(query, tokens, tokens)
    shuffled, _ = model.pool(query, tokens[:, [2, 0, 1]], tokens[:, [2, 0, 1]])
    torch.testing.assert_close(pooled, shuffled)


def test_fused_inception_inputs_equal_two_separate_branch_convolutions() -> None:
    # One 1x1 convolution opens both the 3x1 and the 5x1 branch: with per-channel BatchNorm (batch
    # statistics, training mode) its halves compute what two separate conv-activation-norm stacks do.
    torch.manual_seed(0)
    fused = DeepLOBTrunk(in_channels=1, levels=5, conv=4, inception=6).inception_inputs
    conv, norm = fused[0], fused[2]
    with torch.no_grad():  # not the identity affine, so that a mixed-up half would show
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    x = torch.randn(8, 4, 7, 1)
    halves = fused(x).chunk(2, dim=1)
    for half, rows in zip(halves, (slice(0, 6), slice(6, 12))):
        separate = nn.Sequential(nn.Conv2d(4, 6, 1), nn.LeakyReLU(0.01), nn.BatchNorm2d(6))
        with torch.no_grad():
            separate[0].weight.copy_(conv.weight[rows])
            separate[0].bias.copy_(conv.bias[rows])
            separate[2].weight.copy_(norm.weight[rows])
            separate[2].bias.copy_(norm.bias[rows])
        torch.testing.assert_close(half, separate(x))
