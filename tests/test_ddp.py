"""Distributed training: trained_model launches torchrun through Dagster Pipes, 2 gloo ranks on CPU."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from bmlt_assets.core.checkpoint import CHECKPOINT, load_checkpoint
from bmlt_assets.core.config import ConfigError, load_config
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.distributed import backend_problem, state_digest
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_resources.storage import StorageResource
from bmlt_resources.torchrun import LocalTorchrun
from tests.helpers import write_config

TORCHRUN = {"launcher": "torchrun", "nproc_per_node": 2, "backend": "gloo", "threads": 1}
# Enough signal and training (~5 s a rank) for the model to beat the class prior on validation.
LEARNABLE = {
    "training": TORCHRUN
    | {"epochs": 6, "early_stopping_patience": 3, "class_weights": "none", "learning_rate": 3e-3}
    | {"max_train_samples": None},
    "data": {"synthetic": {"signal_half_life_s": 120, "signal_strength": 1.5, "imbalance_noise": 0.3}},
}


@pytest.mark.slow  # torchrun starts 2 ranks that each import torch and the project: about 20 s
def test_torchrun_ranks_train_one_model_that_is_logged_and_registered(tmp_path: Path) -> None:
    path = write_config(tmp_path, LEARNABLE)
    config = load_config(path)
    everything = INGEST_ASSETS + TRAINING_ASSETS + CHECKS
    instance = dg.DagsterInstance.ephemeral()
    ingest = dg.materialize(
        everything,
        selection=INGEST_ASSETS,
        resources=build_resources(path),
        instance=instance,
        tags=range_tags(config.data.start_date, config.data.end_date),
    )
    assert ingest.success
    result = dg.materialize(
        everything, selection=TRAINING_ASSETS[:2], resources=build_resources(path), instance=instance
    )
    assert result.success
    metadata = result.asset_materializations_for_node("trained_model")[0].metadata

    # Reported by rank 0 through Pipes: both ranks ended with the same weights and buffers...
    assert metadata["ddp_world_size"].value == 2 and metadata["ddp_backend"].value == "gloo"
    digests = metadata["ddp_rank_weight_digests"].value
    assert len(digests) == 2 and digests[0] == digests[1]
    # ...which are the registered model's (the step reads back what rank 0 wrote).
    storage = StorageResource.for_config(config)
    model, _, _ = load_checkpoint(storage.model / CHECKPOINT)
    assert state_digest(model) == digests[0]

    # It learned: validation log loss below that of always predicting the training class prior.
    data = load_dataset(storage.dataset, config)
    prior_log_loss = []
    for h in range(len(config.labels.horizons_s)):
        prior = np.bincount(data.parts["train"].classes[:, h], minlength=data.n_classes) + 1.0
        prior_log_loss.append(-np.log(prior / prior.sum())[data.parts["val"].classes[:, h]].mean())
    assert metadata["best_val_log_loss"].value < np.mean(prior_log_loss)

    # Rank 0 alone logged each epoch into the step's MLflow run.
    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    version = client.get_model_version_by_alias(config.registered_model_name, "challenger")
    history = client.get_metric_history(version.run_id, "val_log_loss")
    epochs = len(metadata["history"].value.splitlines()) - 2  # a markdown table: header and rule
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    assert "temperature_30s" in client.get_run(version.run_id).data.metrics  # the step went on as in-process

    mlflow.set_tracking_uri(config.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{config.registered_model_name}@challenger")
    steps = data.parts["test"].steps[:3]
    index = steps[:, None] + np.arange(1 - config.dataset.window_steps, 1)
    probabilities = loaded.predict(
        {
            "book": data.source.base[index],
            "mids": data.source.mids[index],
            "timestamp_ns": data.source.timestamps[steps],
        }
    )
    assert probabilities.shape == (3, 2, config.labels.n_classes)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow  # one torchrun launch per fold: about 25 s
def test_walk_forward_trains_every_fold_with_torchrun(tmp_path: Path) -> None:
    split = {"split": "walk_forward", "folds": 2, "val_fraction": 0.15, "test_fraction": 0.2}
    path = write_config(tmp_path, {"training": TORCHRUN, "dataset": split})
    config = load_config(path)
    everything, instance = INGEST_ASSETS + TRAINING_ASSETS + CHECKS, dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        everything, selection=INGEST_ASSETS, resources=build_resources(path), instance=instance, tags=tags
    ).success
    result = dg.materialize(
        everything, selection=TRAINING_ASSETS[:2], resources=build_resources(path), instance=instance
    )
    assert result.success
    storage = StorageResource.for_config(config)
    assert (storage.model / "fold0" / CHECKPOINT).exists() and (storage.model / CHECKPOINT).exists()
    run_id = result.asset_materializations_for_node("trained_model")[0].metadata["mlflow_run_id"].value
    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    for name in ("fold0_val_log_loss", "val_log_loss"):  # the earlier fold's under its prefix
        steps = sorted(m.step for m in client.get_metric_history(run_id, name))
        assert steps == list(range(1, len(steps) + 1)) and steps


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"nproc_per_node": 2}, "apply to launcher 'torchrun' only"),
        ({"launcher": "torchrun", "nproc_per_node": 2, "batch_size": 63}, "must divide evenly among"),
        ({"launcher": "torchrun", "backend": "mpi"}, "training.backend = 'mpi'"),
    ],
)
def test_launcher_settings_are_checked(tmp_path: Path, training: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write_config(tmp_path, {"training": training}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_nccl_without_a_gpu_says_to_use_gloo() -> None:
    problem = backend_problem("nccl", 2)
    assert problem is not None and "needs CUDA GPUs" in problem and "use backend 'gloo'" in problem
    assert backend_problem("gloo", 2) is None
    with pytest.raises(RuntimeError, match="needs CUDA GPUs"):  # before any process starts
        LocalTorchrun().launch(None, ["false"], {}, "nccl", 2)  # type: ignore[arg-type]


def test_the_kubernetes_training_pod_is_a_valid_pod() -> None:
    """KubernetesTorchrun's pod, as dagster-k8s's PipesK8sClient builds it, passes the API schema."""
    import kubernetes
    import kubernetes_validate
    from dagster_k8s.pipes import build_pod_body

    from bmlt_resources.torchrun import KubernetesTorchrun

    launcher = KubernetesTorchrun(
        image="registry.example/bmlt:1.0", data_volume_claim="bmlt-data", gpus=2, env_from_secrets=["bmlt-mlflow"]
    )
    command = ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "worker", "{}"]
    pod = build_pod_body("bmlt-train", launcher.image, command, {"MLFLOW_RUN_ID": "0"}, None, launcher.pod_spec())
    manifest = {"apiVersion": "v1", "kind": "Pod", **kubernetes.client.ApiClient().sanitize_for_serialization(pod)}
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    container = manifest["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2" and container["command"] == command
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["envFrom"] == [{"secretRef": {"name": "bmlt-mlflow"}}]
    container["volumeMount"] = container.pop("volumeMounts")  # a misspelled field is caught
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.30", strict=True)
