"""DeepLOB-family CNN+LSTM classifiers over multi-asset order-book windows.

The convolutional trunk follows DeepLOB (Zhang, Zohren & Roberts, 2019, "DeepLOB: Deep
Convolutional Neural Networks for Limit Order Books", IEEE TSP): three conv blocks that merge
(price, quantity) pairs, then (bid, ask) pairs, then all levels, an inception module, an LSTM
and a softmax head. With one asset, 10 levels, ``conv_channels=32``, ``inception_channels=64``,
``lstm_hidden=64``, one 3-class head and no auxiliary input, it is exactly the published
PyTorch model (143,907 parameters).

Our input per asset and level is (bid px, bid qty, ask px, ask qty), so the first stride-2
convolution pairs price with quantity per side and the second pairs bid with ask per level, as
in the paper. Multi-asset strategies (DESIGN.md decision 2):

* ``stacked``: assets are input channels of one trunk;
* ``branches``: one shared trunk per asset; each asset's features, joined with a learned asset
  embedding, pass a shared projection (the embedding lets it specialise per asset) and are
  concatenated before the LSTM.

Temporal features (decision 7, ``cyclical``) join the LSTM output before the heads. There is one
head per horizon; the model returns logits of shape (B, horizons, classes).
"""

from __future__ import annotations

import torch
from torch import nn

from bmlt_resources.settings import ModelConfig


def _conv(cin: int, cout: int, kernel: tuple[int, int], activation: nn.Module, stride=(1, 1), padding=(0, 0)) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), activation, nn.BatchNorm2d(cout)]


class DeepLOBTrunk(nn.Module):
    """(N, C_in, T, L*4) -> (N, T - 18, 3 * inception_channels)."""

    def __init__(self, in_channels: int, levels: int, conv: int, inception: int):
        super().__init__()
        leaky = lambda: nn.LeakyReLU(0.01)  # noqa: E731
        self.blocks = nn.Sequential(
            *_conv(in_channels, conv, (1, 2), leaky(), stride=(1, 2)),
            *_conv(conv, conv, (4, 1), leaky()),
            *_conv(conv, conv, (4, 1), leaky()),
            *_conv(conv, conv, (1, 2), nn.Tanh(), stride=(1, 2)),
            *_conv(conv, conv, (4, 1), nn.Tanh()),
            *_conv(conv, conv, (4, 1), nn.Tanh()),
            *_conv(conv, conv, (1, levels), leaky()),
            *_conv(conv, conv, (4, 1), leaky()),
            *_conv(conv, conv, (4, 1), leaky()),
        )
        self.inception_3 = nn.Sequential(
            *_conv(conv, inception, (1, 1), leaky()), *_conv(inception, inception, (3, 1), leaky(), padding=(1, 0))
        )
        self.inception_5 = nn.Sequential(
            *_conv(conv, inception, (1, 1), leaky()), *_conv(inception, inception, (5, 1), leaky(), padding=(2, 0))
        )
        self.inception_pool = nn.Sequential(
            nn.MaxPool2d((3, 1), stride=(1, 1), padding=(1, 0)), *_conv(conv, inception, (1, 1), leaky())
        )
        self.out_features = 3 * inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        x = torch.cat([self.inception_3(x), self.inception_5(x), self.inception_pool(x)], dim=1)
        return x.squeeze(-1).transpose(1, 2)  # (N, T', features)


class OrderBookClassifier(nn.Module):
    def __init__(self, config: ModelConfig, levels: int, assets: int, horizons: int, classes: int):
        super().__init__()
        self.multi_asset = config.multi_asset
        self.assets = assets
        self.time_features = 4 if config.temporal == "cyclical" else 0
        in_channels = assets if config.multi_asset == "stacked" else 1
        self.trunk = DeepLOBTrunk(in_channels, levels, config.conv_channels, config.inception_channels)
        lstm_input = self.trunk.out_features
        if config.multi_asset == "branches":
            self.asset_embedding = nn.Embedding(assets, config.asset_embedding_dim)
            self.asset_projection = nn.Sequential(
                nn.Linear(self.trunk.out_features + config.asset_embedding_dim, self.trunk.out_features // 2),
                nn.LeakyReLU(0.01),
            )
            lstm_input = assets * (self.trunk.out_features // 2)
        self.lstm = nn.LSTM(lstm_input, config.lstm_hidden, batch_first=True)
        self.heads = nn.ModuleList(
            nn.Linear(config.lstm_hidden + self.time_features, classes) for _ in range(horizons)
        )

    def forward(self, windows: torch.Tensor, time_features: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B, T, L, 4, K) normalized; time_features: (B, 4) or None."""
        batch, steps, levels, _, assets = windows.shape
        per_asset = windows.permute(0, 4, 1, 2, 3).reshape(batch, assets, steps, levels * 4)
        if self.multi_asset == "stacked":
            sequence = self.trunk(per_asset)
        else:
            features = self.trunk(per_asset.reshape(batch * assets, 1, steps, levels * 4))
            features = features.reshape(batch, assets, features.shape[1], -1).transpose(1, 2)
            embedding = self.asset_embedding.weight.expand(batch, features.shape[1], -1, -1)
            merged = self.asset_projection(torch.cat([features, embedding], dim=-1))
            sequence = merged.flatten(2)
        _, (hidden, _) = self.lstm(sequence)
        summary = hidden[-1]
        if self.time_features:
            summary = torch.cat([summary, time_features], dim=1)
        return torch.stack([head(summary) for head in self.heads], dim=1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
