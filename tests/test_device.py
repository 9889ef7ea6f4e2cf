"""training.device: where training, tuning trials, evaluation and walk-forward run, and the
precision and memory format chosen for it. No GPU here: CUDA's presence is patched where the
resolution is tested, and a config that asks for a GPU on this machine must fail, never train on
the CPU silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bmlt_assets.core import train as train_module
from bmlt_assets.core.checkpoint import load_checkpoint, model_spec, save_checkpoint
from bmlt_assets.core.config import ConfigError, PlatformConfig, load_config
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.distributed import ALONE, DeviceError, resolve_device
from bmlt_assets.core.train import FastPath, build_model, choose_fast_path, measure_fast_paths, train
from bmlt_assets.core.tuning import tune
from tests.helpers import synthetic_days, write_config


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_without_cuda_auto_is_the_cpu_and_a_gpu_asked_for_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'cuda', but torch .* sees no CUDA GPU .* use device auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="'cuda:1'"):
        resolve_device("cuda:1")


def test_with_cuda_auto_is_the_first_gpu_and_an_index_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"has 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"device": "gpu"}, "training.device"),
        ({"device": "cuda:x"}, "training.device"),
        (
            {"launcher": "torchrun", "device": "cuda:1", "backend": "nccl"},
            "ranks each take the GPU of their local rank",
        ),
        ({"launcher": "torchrun", "device": "cuda"}, "needs backend nccl"),
        ({"launcher": "torchrun", "device": "cpu", "backend": "nccl"}, "backend nccl trains on GPUs"),
        ({"nnodes": 2}, "apply to launcher 'torchrun' only"),
    ],
)
def test_device_settings_are_checked(tmp_path: Path, training: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, {"training": training}))


def _with(config: PlatformConfig, **training) -> PlatformConfig:
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


def test_training_and_tuning_trials_train_on_the_configured_device(
    tiny_config: PlatformConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    result = train(_with(tiny_config, epochs=1), data)
    assert result.device == "cpu" and next(result.model.parameters()).device.type == "cpu"
    assert result.fast_path == FastPath("fp32", True)  # the CPU defaults, nothing timed
    assert result.samples_per_s > 0

    # Asked for a GPU this machine lacks, training and every tuning trial fail at once (they used
    # to train on the CPU whatever the config said).
    gpu = _with(tiny_config, device="cuda", epochs=1)
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        train(gpu, data)
    space = {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.01}}
    hpo = {"enabled": True, "n_trials": 1, "search_space": space, "pruner": "none"}
    tuned = PlatformConfig.model_validate({**gpu.model_dump(mode="json"), "hpo": hpo})

    class Trials:
        failed = 0

        def start(self, number, params):
            pass

        def epoch(self, record):
            pass

        def end(self, value, state):
            Trials.failed += state == "FAILED"

    import optuna

    with pytest.raises(DeviceError):
        tune(tuned, data, optuna.storages.InMemoryStorage(), Trials(), "device-study")
    assert Trials.failed == 1


def test_a_checkpoint_of_a_gpu_model_loads_on_a_cpu_and_goes_to_the_device_asked(
    tiny_config: PlatformConfig, tmp_path: Path
) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    model = build_model(tiny_config, data)
    spec = model_spec(tiny_config, data, [])
    save_checkpoint(tmp_path / "checkpoint.pt", model, data.source.normalizer, spec)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert all(tensor.device.type == "cpu" for tensor in saved["state_dict"].values())
    with pytest.raises((RuntimeError, AssertionError)):  # no CUDA here: moving there must fail, not stay on CPU
        load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cuda", 0))


def test_on_a_gpu_the_fastest_candidate_is_kept_only_when_clearly_faster(
    tiny_config: PlatformConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    cuda = torch.device("cuda", 0)
    timings = {"fp32": 1000.0, "fp32+channels_last": 1020.0, "bf16": 1900.0, "bf16+channels_last": 2100.0}

    def measure(candidates: list[tuple[str, bool]]) -> dict[str, float]:
        assert candidates == [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
        return dict(timings)

    chosen = choose_fast_path(tiny_config, cuda, measure, ALONE)
    assert (chosen.precision, chosen.channels_last, chosen.measured) == ("bf16", True, timings)
    timings.update({"bf16": 1030.0, "bf16+channels_last": 1040.0})  # under 5 % better: not worth bf16
    assert choose_fast_path(tiny_config, cuda, measure, ALONE).precision == "fp32"
    fixed = _with(tiny_config, precision="fp32", channels_last=False)
    assert choose_fast_path(fixed, cuda, measure, ALONE) == FastPath("fp32", False)  # set: nothing timed
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert choose_fast_path(_with(tiny_config, channels_last=True), cuda, measure, ALONE) == FastPath("fp32", True)


def test_the_candidates_are_timed_on_real_training_steps_without_disturbing_the_seeded_run(
    tiny_config: PlatformConfig,
) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    part = data.parts["train"]
    batch = next(iter(train_module.batch_loader(data, part, range(len(part)), 32, 0)))
    losses = [torch.nn.CrossEntropyLoss() for _ in data.horizons]
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    candidates = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    measured = measure_fast_paths(
        lambda: build_model(tiny_config, data), batch, losses, torch.device("cpu"), candidates, steps=2
    )
    assert list(measured) == ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    assert all(value > 0 for value in measured.values())
    assert torch.equal(torch.rand(3), before)  # the random stream is where it was
