"""DeepLOB-family CNN+LSTM classifiers over multi-asset order-book windows.

The convolutional trunk follows DeepLOB (Zhang, Zohren & Roberts, 2019, "DeepLOB: Deep
Convolutional Neural Networks for Limit Order Books", IEEE TSP): three conv blocks that merge
(price, quantity) pairs, then (bid, ask) pairs, then all levels, an inception module, an LSTM
and a softmax head. With one asset, 10 levels, ``conv_channels=32``, ``inception_channels=64``,
``lstm_hidden=64``, one 3-class head and no auxiliary input, it is exactly the published
PyTorch model (143,907 parameters).

Our input per asset and level is (bid px, bid qty, ask px, ask qty), so the first stride-2
convolution pairs price with quantity per side and the second pairs bid with ask per level, as
in the paper. Multi-asset strategies (docs/design.md §4, decision 2):

* ``stacked``: assets are input channels of one trunk;
* ``branches``: one shared trunk per asset; each asset's features, joined with a learned asset
  embedding, pass a shared projection (the embedding lets it specialise per asset) and are
  concatenated before the LSTM;
* ``attention``: the same shared trunk and asset tokens, pooled across assets at every time step
  by multi-head attention with a learned query (a dynamic weighting of the assets), so the LSTM
  input does not grow with the number of assets.

Temporal features (decision 7) join the LSTM output before the heads: ``cyclical`` (sin/cos of
the time of day and of the week), ``embedding`` (learned hour-of-day and day-of-week vectors) or
``none``. There is one head per horizon; the model returns logits of shape (B, horizons, classes).
"""

from __future__ import annotations

import torch
from torch import nn

from bmlt_assets.core.config import ModelConfig


def _conv(
    cin: int, cout: int, kernel: tuple[int, int], activation: nn.Module, stride=(1, 1), padding=(0, 0)
) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), activation, nn.BatchNorm2d(cout)]


def _leaky() -> nn.Module:
    # In place: the convolution's output is not needed for its backward, so this saves an
    # allocation and a pass over the largest tensors of the step.
    return nn.LeakyReLU(0.01, inplace=True)


class DeepLOBTrunk(nn.Module):
    """(N, C_in, T, L*4) -> (N, T - 18, 3 * inception_channels)."""

    def __init__(self, in_channels: int, levels: int, conv: int, inception: int):
        super().__init__()
        leaky = _leaky
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
        # The 3x1 and 5x1 branches each open with a 1x1 convolution of the same input: one
        # convolution computes both (BatchNorm is per channel, so it is the same as two).
        self.inception_inputs = nn.Sequential(*_conv(conv, 2 * inception, (1, 1), leaky()))
        self.inception_3 = nn.Sequential(*_conv(inception, inception, (3, 1), leaky(), padding=(1, 0)))
        self.inception_5 = nn.Sequential(*_conv(inception, inception, (5, 1), leaky(), padding=(2, 0)))
        self.inception_pool = nn.Sequential(
            nn.MaxPool2d((3, 1), stride=(1, 1), padding=(1, 0)), *_conv(conv, inception, (1, 1), leaky())
        )
        self.out_features = 3 * inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        to_3, to_5 = self.inception_inputs(x).chunk(2, dim=1)
        x = torch.cat([self.inception_3(to_3), self.inception_5(to_5), self.inception_pool(x)], dim=1)
        return x.squeeze(-1).transpose(1, 2)  # (N, T', features)


class TemporalEncoder(nn.Module):
    """Calendar (B, 2) = (fraction of the day, day of week) -> (B, out_features)."""

    def __init__(self, kind: str, embedding_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "embedding":
            self.hour = nn.Embedding(24, embedding_dim)
            self.weekday = nn.Embedding(7, embedding_dim)
        self.out_features = {"cyclical": 4, "embedding": 2 * embedding_dim, "none": 0}[kind]

    def forward(self, calendar: torch.Tensor) -> torch.Tensor:
        day_fraction, weekday = calendar[:, 0], calendar[:, 1]
        if self.kind == "cyclical":
            day, week = 2 * torch.pi * day_fraction, 2 * torch.pi * weekday / 7
            return torch.stack([day.sin(), day.cos(), week.sin(), week.cos()], dim=1)
        hour = (day_fraction * 24).long().clamp(0, 23)
        return torch.cat([self.hour(hour), self.weekday(weekday.long())], dim=1)


class OrderBookClassifier(nn.Module):
    def __init__(self, config: ModelConfig, levels: int, assets: int, horizons: int, classes: int):
        super().__init__()
        self.multi_asset = config.multi_asset
        in_channels = assets if config.multi_asset == "stacked" else 1
        self.trunk = DeepLOBTrunk(in_channels, levels, config.conv_channels, config.inception_channels)
        lstm_input = self.trunk.out_features
        if config.multi_asset in ("branches", "attention"):
            token = self.trunk.out_features // 2
            self.asset_embedding = nn.Embedding(assets, config.asset_embedding_dim)
            self.asset_projection = nn.Sequential(
                nn.Linear(self.trunk.out_features + config.asset_embedding_dim, token), nn.LeakyReLU(0.01)
            )
            lstm_input = assets * token
        if config.multi_asset == "attention":
            self.pool_query = nn.Parameter(torch.randn(1, 1, token) / token**0.5)
            self.pool = nn.MultiheadAttention(token, num_heads=config.attention_heads, batch_first=True)
            lstm_input = token
        self.temporal = TemporalEncoder(config.temporal, config.temporal_embedding_dim)
        self.lstm = nn.LSTM(lstm_input, config.lstm_hidden, batch_first=True)
        self.heads = nn.ModuleList(
            nn.Linear(config.lstm_hidden + self.temporal.out_features, classes) for _ in range(horizons)
        )

    def _asset_tokens(self, per_asset: torch.Tensor) -> torch.Tensor:
        """(B, K, T, F) -> (B, T', K, token): shared trunk per asset, plus the asset embedding."""
        batch, assets, steps, width = per_asset.shape
        features = self.trunk(per_asset.reshape(batch * assets, 1, steps, width))
        features = features.reshape(batch, assets, features.shape[1], -1).transpose(1, 2)
        embedding = self.asset_embedding.weight.expand(batch, features.shape[1], -1, -1)
        return self.asset_projection(torch.cat([features, embedding], dim=-1))

    def forward(self, windows: torch.Tensor, calendar: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B, T, L, 4, K) normalized; calendar: (B, 2), needed unless temporal is none."""
        batch, steps, levels, _, assets = windows.shape
        per_asset = windows.permute(0, 4, 1, 2, 3).reshape(batch, assets, steps, levels * 4)
        if self.multi_asset == "stacked":
            sequence = self.trunk(per_asset)
        elif self.multi_asset == "branches":
            sequence = self._asset_tokens(per_asset).flatten(2)
        else:
            tokens = self._asset_tokens(per_asset)
            flat = tokens.reshape(-1, assets, tokens.shape[-1])
            pooled, _ = self.pool(self.pool_query.expand(flat.shape[0], -1, -1), flat, flat, need_weights=False)
            sequence = pooled.reshape(batch, tokens.shape[1], -1)
        _, (hidden, _) = self.lstm(sequence)
        summary = hidden[-1]
        if self.temporal.out_features:
            summary = torch.cat([summary, self.temporal(calendar)], dim=1)
        return torch.stack([head(summary) for head in self.heads], dim=1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
