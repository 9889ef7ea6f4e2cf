"""Training throughput of our model against a plain PyTorch DeepLOB, on one device.

    python -m benchmarks.gpu_throughput --device cuda [--config configs/default.yaml] [--out FILE]
    python -m benchmarks.gpu_throughput --device cpu --threads 2 --quick

Measured twice: our model as the default config builds it (``default_config``), and at the
published DeepLOB's own size (``deeplob_size``: 1 asset, 10 levels, T=100, 32/64/64, 3 classes).

Our model is built exactly as training builds it from the config (assets, representation
levels, ``dataset.window_steps``, model widths, multi-asset strategy, horizons and classes,
``training.channels_last`` and ``training.precision``) and fed the (B, T, L, 4, K) windows the
dataset delivers. The reference is the published DeepLOB (Zhang, Zohren & Roberts 2019, the
authors' PyTorch notebook; 32/64/64 widths) given the same samples as one (B, 1, T, K*L*4)
image, each asset's levels side by side in the paper's (price, quantity), (bid, ask) order. It
is adapted only where that input and the label shape require: its level-merging (1, 10)
convolution spans all K*L levels, and its head outputs horizons x classes. A second reference
reads the assets as K input channels of a (B, K, T, L*4) image (only its first convolution
changes); it does fewer operations per sample, so both ratios are reported.

Same batch (``training.batch_size``), threads and device for all; rounds interleave the
reference and every variant so that drifting load on a shared machine hits all alike; the
figures are medians over rounds. Imports only torch, numpy, yaml, pydantic and
``bmlt_assets.core.{config,models}``, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median

import torch
from torch import nn

from bmlt_assets.core.config import ModelConfig, PlatformConfig, TrainingConfig, load_config
from bmlt_assets.core.models import OrderBookClassifier, parameter_count

ROOT = Path(__file__).resolve().parent.parent


class PlainDeepLOB(nn.Module):
    """The reference: DeepLOB written the plain way (as in the authors' PyTorch notebook).

    Published: ``in_channels=1``, ``levels=10``, ``outputs=3`` (143,907 parameters)."""

    def __init__(self, in_channels: int = 1, levels: int = 10, outputs: int = 3):
        super().__init__()
        act = lambda: nn.LeakyReLU(negative_slope=0.01)  # noqa: E731
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 32, (1, 2), stride=(1, 2)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(32, 32, (1, 2), stride=(1, 2)),
            nn.Tanh(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            nn.Tanh(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            nn.Tanh(),
            nn.BatchNorm2d(32),
        )
        self.conv3 = nn.Sequential(
            nn.Conv2d(32, 32, (1, levels)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
        )
        self.inp1 = nn.Sequential(
            nn.Conv2d(32, 64, (1, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, (3, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
        )
        self.inp2 = nn.Sequential(
            nn.Conv2d(32, 64, (1, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, (5, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
        )
        self.inp3 = nn.Sequential(
            nn.MaxPool2d((3, 1), stride=(1, 1), padding=(1, 0)),
            nn.Conv2d(32, 64, (1, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
        )
        self.lstm = nn.LSTM(input_size=192, hidden_size=64, num_layers=1, batch_first=True)
        self.fc1 = nn.Linear(64, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        x = torch.cat((self.inp1(x), self.inp2(x), self.inp3(x)), dim=1)
        x = x.permute(0, 2, 1, 3)
        x = torch.reshape(x, (-1, x.shape[1], x.shape[2]))
        x, _ = self.lstm(x)
        return torch.softmax(self.fc1(x[:, -1, :]), dim=1)


@dataclass
class Comparison:
    """Our model and the references on the same random samples (throughput does not depend on values)."""

    build_ours: Callable[[], OrderBookClassifier]
    references: dict[str, tuple[nn.Module, torch.Tensor]]  # name -> (model, its input image)
    windows: torch.Tensor  # (B, T, L, 4, K), as the dataset delivers them
    calendar: torch.Tensor  # (B, 2)
    target: torch.Tensor  # (B, horizons)
    description: dict


def comparison(
    model: ModelConfig, levels: int, assets: int, steps: int, horizons: int, classes: int, batch: int
) -> Comparison:
    windows = torch.randn(batch, steps, levels, 4, assets)
    calendar = torch.stack([torch.rand(batch), torch.randint(0, 7, (batch,)).float()], dim=1)
    side_by_side = windows.permute(0, 1, 4, 2, 3).reshape(batch, 1, steps, assets * levels * 4).contiguous()
    as_channels = windows.permute(0, 4, 1, 2, 3).reshape(batch, assets, steps, levels * 4).contiguous()
    references: dict[str, tuple[nn.Module, torch.Tensor]] = {
        "reference": (PlainDeepLOB(1, assets * levels, horizons * classes), side_by_side)
    }
    if assets > 1:
        references["reference_assets_as_channels"] = (PlainDeepLOB(assets, levels, horizons * classes), as_channels)
    ours = lambda: OrderBookClassifier(model, levels, assets, horizons, classes)  # noqa: E731
    description = {
        "batch_size": batch,
        "window_steps": steps,
        "levels": levels,
        "assets": assets,
        "horizons": horizons,
        "classes": classes,
        "model": model.model_dump(mode="json"),
        "parameters": {"ours": parameter_count(ours())} | {k: parameter_count(m) for k, (m, _) in references.items()},
    }
    return Comparison(ours, references, windows, calendar, torch.randint(0, classes, (batch, horizons)), description)


def default_config_comparison(config: PlatformConfig, batch: int) -> Comparison:
    """Our model exactly as training builds it from ``config``."""
    return comparison(
        config.model,
        config.representation.levels,
        len(config.data.symbols),
        config.dataset.window_steps,
        len(config.labels.horizons_s),
        config.labels.n_classes,
        batch,
    )


def deeplob_size_comparison(batch: int = 64) -> Comparison:
    """Our model at the published DeepLOB's own size: 1 asset, 10 levels, T=100, 32/64/64, 3 classes."""
    return comparison(ModelConfig(multi_asset="stacked", temporal="none"), 10, 1, 100, 1, 3, batch)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(
    model: Callable[..., torch.Tensor],
    forward: Callable[[Callable[..., torch.Tensor]], torch.Tensor],
    target: torch.Tensor,
    device: torch.device,
    bf16: bool = False,
) -> Callable[[int], float]:
    """A function that runs ``steps`` training steps (AdamW, as training uses) and returns samples/s.
    ``forward(model)`` returns (B, horizons, classes) scores."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # type: ignore[attr-defined]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(model).float()
        loss = sum(nn.functional.cross_entropy(out[:, h], target[:, h]) for h in range(out.shape[1]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()

    for _ in range(3):  # warm-up (and compilation, for torch.compile)
        step()

    def rate(steps: int) -> float:
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        return steps * len(target) / (time.perf_counter() - started)

    return rate


def measure(
    setup: Comparison,
    device: torch.device,
    training: TrainingConfig,
    steps: int,
    rounds: int,
    extra_variants: tuple[str, ...] = (),
) -> dict:
    """Samples/s of the references and of our model as ``training`` runs it (``shipped``: its
    channels_last and precision), plus ``extra_variants`` among eager (contiguous fp32),
    bf16_autocast and torch_compile."""
    torch.manual_seed(0)
    windows, calendar, target = (t.to(device) for t in (setup.windows, setup.calendar, setup.target))
    # "auto" as training resolves it without timing (core.train.choose_fast_path): fp32 and
    # channels-last; on a GPU training times the candidates, which the extra variants show here.
    precision = "fp32" if training.precision == "auto" else training.precision
    channels_last = training.channels_last is not False
    heads, shipped_bf16 = target.shape[1], precision == "bf16"

    def ours(variant: str) -> Callable[..., torch.Tensor]:
        model = setup.build_ours().to(device)
        if channels_last and variant != "eager":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return torch.compile(model) if variant == "torch_compile" else model

    trainers: dict[str, Callable[[int], float]] = {}
    for name, (plain, image) in setup.references.items():
        trainers[name] = trainer(
            plain.to(device), partial(_reference_scores, image=image.to(device), heads=heads), target, device
        )
    run_ours = partial(_our_scores, windows=windows, calendar=calendar)
    trainers["shipped"] = trainer(ours("shipped"), run_ours, target, device, bf16=shipped_bf16)
    for variant in extra_variants:
        trainers[variant] = trainer(ours(variant), run_ours, target, device, bf16=variant == "bf16_autocast")
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, rate in trainers.items():
            rates[name].append(rate(steps))
    medians = {name: median(values) for name, values in rates.items()}
    reference = medians["reference"]
    model = ours("shipped")
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=shipped_bf16):
        model.eval()  # type: ignore[attr-defined]
        for _ in range(2):
            model(windows, calendar)
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(5):
            model(windows, calendar)
        _synchronize(device)
        latency = (time.perf_counter() - started) / 5
    return {
        **setup.description,
        "steps_per_round": steps,
        "rounds": rounds,
        "shipped": {"channels_last": channels_last, "precision": precision},
        "reference_samples_per_s": reference,
        "samples_per_s": medians,
        "ratio": {name: value / reference for name, value in medians.items() if name != "reference"},
        "rounds_samples_per_s": rates,
        "inference_ms_per_batch": latency * 1e3,
    }


def _reference_scores(model: nn.Module, image: torch.Tensor, heads: int) -> torch.Tensor:
    return model(image).reshape(len(image), heads, -1)


def _our_scores(model: nn.Module, windows: torch.Tensor, calendar: torch.Tensor) -> torch.Tensor:
    return model(windows, calendar)


def _cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 instruction sets (Linux): bf16 autocast pays off only with these."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return sorted(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})


def machine(device: torch.device) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_units": _cpu_bf16_flags(),
    }
    if device.type == "cuda":  # what "fp32" means there: TF32 tensor cores unless disabled
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--batch-size", type=int, help="default: the config's training.batch_size")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the figures are medians")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes on a CPU)")
    parser.add_argument("--strict-fp32", action="store_true", help="CUDA: no TF32 tensor cores in convolutions")
    parser.add_argument("--quick", action="store_true", help="2 steps x 2 rounds: checks that it runs")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.strict_fp32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    steps, rounds = (2, 2) if args.quick else (args.steps, args.rounds)
    config = load_config(args.config)
    extra = ("eager", "bf16_autocast", *(("torch_compile",) if args.compile else ()))
    batch = args.batch_size or config.training.batch_size
    result = {
        "machine": machine(device),
        "config": str(args.config),
        "default_config": measure(
            default_config_comparison(config, batch), device, config.training, steps, rounds, extra
        ),
        "deeplob_size": measure(deeplob_size_comparison(batch), device, config.training, steps, rounds, extra),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(text + "\n")
        partial.replace(args.out)  # atomic: a reader never sees half a result


if __name__ == "__main__":
    main()
