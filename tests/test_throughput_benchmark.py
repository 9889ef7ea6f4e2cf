"""benchmarks/gpu_throughput.py: a faithful reference, our model as the config builds it, and a
run on a machine without the platform's frameworks (a GPU box has only torch, numpy, yaml, pydantic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_throughput import PlainDeepLOB, default_config_comparison
from bmlt_assets.core.config import load_config
from bmlt_assets.core.models import parameter_count
from tests.helpers import write_config

ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_A_GPU_BOX = ["polars", "pyarrow", "pandas", "dagster", "mlflow", "s3fs", "optuna"]


def test_reference_is_the_published_deeplob_and_reads_the_same_samples() -> None:
    assert parameter_count(PlainDeepLOB()) == 143_907  # the authors' notebook, as tests/test_model.py
    config = load_config(ROOT / "configs" / "default.yaml")
    setup = default_config_comparison(config, config.training.batch_size)
    reference, image = setup.references["reference"]
    batch, steps, levels, features, assets = setup.windows.shape
    assert (batch, steps, levels, assets) == (
        config.training.batch_size,
        config.dataset.window_steps,
        config.representation.levels,
        len(config.data.symbols),
    )
    # Asset k's level l (bid px, bid qty, ask px, ask qty) sits at width (k * L + l) * 4 of the image.
    torch.testing.assert_close(image[:, 0, :, (2 * levels + 3) * 4 : (2 * levels + 4) * 4], setup.windows[..., 3, :, 2])
    # Adapted only in its level-merging width and its head: the rest has the published sizes.
    published = {name: p.shape for name, p in PlainDeepLOB().named_parameters()}
    adapted = {name: p.shape for name, p in reference.named_parameters() if published[name] != p.shape}
    assert adapted == {
        "conv3.0.weight": (32, 32, 1, assets * levels),
        "fc1.weight": (len(config.labels.horizons_s) * config.labels.n_classes, 64),
        "fc1.bias": (len(config.labels.horizons_s) * config.labels.n_classes,),
    }


@pytest.mark.slow  # a benchmark run in a bare interpreter: about 12 s
def test_runs_on_cpu_without_the_platform_frameworks(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    block = f"import sys; sys.modules.update(dict.fromkeys({ABSENT_ON_A_GPU_BOX!r}))"
    run = f"{block}; import runpy; runpy.run_module('benchmarks.gpu_throughput', run_name='__main__')"
    argv = ["--device", "cpu", "--threads", "1", "--quick", "--config", str(write_config(tmp_path)), "--out", str(out)]
    subprocess.run([sys.executable, "-c", run, *argv], cwd=ROOT, check=True, capture_output=True, timeout=120)
    result = json.loads(out.read_text())
    default, deeplob_size = result["default_config"], result["deeplob_size"]
    assert default["shipped"] == {"channels_last": True, "precision": "fp32"}  # the tiny config's training
    assert (default["assets"], default["levels"], default["window_steps"]) == (2, 5, 20)
    assert set(default["ratio"]) == {"reference_assets_as_channels", "shipped", "eager", "bf16_autocast"}
    assert all(value > 0 for value in default["samples_per_s"].values())
    assert len(default["rounds_samples_per_s"]["reference"]) == default["rounds"] == 2
    assert deeplob_size["parameters"] == {"ours": 143_907, "reference": 143_907}
