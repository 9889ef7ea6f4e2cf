"""Distributed training: trained_model launches torchrun through Dagster Pipes, 2 gloo ranks on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from bmlt_assets.core.checkpoint import CHECKPOINT, load_checkpoint
from bmlt_assets.core.config import ConfigError, LaunchedPods, TrainingConfig, load_config
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.distributed import backend_problem, state_digest, torchrun_args
from bmlt_assets.core.train import load_result
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_assets.training.training_worker import TrainingJob
from bmlt_resources.storage import StorageResource
from bmlt_resources.torchrun import KubernetesTorchrun, LocalTorchrun
from tests.helpers import write_config
from tests.services import free_port

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
    nccl = TrainingConfig(launcher="torchrun", backend="nccl", nproc_per_node=2)
    with pytest.raises(RuntimeError, match="needs CUDA GPUs"):  # before any process starts
        LocalTorchrun().launch(None, ["false"], {}, nccl)  # type: ignore[arg-type]


def test_the_torchrun_launcher_is_chosen_by_the_config(tmp_path: Path) -> None:
    local = build_resources(write_config(tmp_path, {"training": TORCHRUN}, "local.yaml"))["torchrun"]
    assert isinstance(local, LocalTorchrun)
    pods = {"image": "registry.example/bmlt:1.0-cu128", "gpus": 2, "data_volume_claim": "bmlt-data"}
    path = write_config(
        tmp_path, {"training": TORCHRUN, "deployment": {"torchrun": "kubernetes", "torchrun_pods": pods}}
    )
    remote = build_resources(path)["torchrun"]
    assert isinstance(remote, KubernetesTorchrun) and remote.pods.gpus == 2 and remote.pods.image == pods["image"]
    with pytest.raises(ConfigError, match="needs deployment.torchrun: kubernetes"):
        load_config(write_config(tmp_path, {"training": TORCHRUN | {"nnodes": 2}}, "nodes.yaml"))


def test_the_kubernetes_training_pods_and_rendezvous_service_are_valid() -> None:
    """KubernetesTorchrun's node 0 pod (as PipesK8sClient builds it), the other nodes' pods and
    the headless rendezvous Service pass the API schema, and every node runs the c10d rendezvous."""
    import kubernetes
    import kubernetes_validate
    from dagster_k8s.pipes import build_pod_body

    from bmlt_resources.kubernetes import pod_spec

    pods = LaunchedPods(
        image="registry.example/bmlt:1.0-cu128",
        data_volume_claim="bmlt-data",
        gpus=2,
        env_from_secrets=["bmlt-mlflow"],
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    launcher = KubernetesTorchrun(pods_json=pods.model_dump_json())
    training = TrainingConfig(launcher="torchrun", backend="nccl", device="cuda", nproc_per_node=2, nnodes=3)
    commands = launcher.node_commands(["-m", "worker", "{}"], training, "abc")
    assert [command.count("--rdzv-endpoint=bmlt-rdzv-abc:29400") for command in commands] == [1, 1, 1]
    assert [command[-4] for command in commands] == ["--rdzv-conf=is_host=true"] + ["--rdzv-conf=is_host=false"] * 2
    api = kubernetes.client.ApiClient()
    pod = build_pod_body(
        "bmlt-train", pods.image, commands[0], {"MLFLOW_RUN_ID": "0"}, None, pod_spec(pods, commands[0], {}, "torchrun")
    )
    manifests = [
        {"apiVersion": "v1", "kind": "Pod", **api.sanitize_for_serialization(pod)},
        launcher.node_pod("abc", 1, commands[1], {"MLFLOW_RUN_ID": "0"}),
        launcher.rendezvous_service("abc", training),
    ]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.30", strict=True)
    node0, node1, service = manifests
    container = node0["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2" and container["command"] == commands[0]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["envFrom"] == [{"secretRef": {"name": "bmlt-mlflow"}}]
    assert node1["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert service["spec"]["selector"] == {"bmlt/torchrun": "abc", "bmlt/torchrun-node": "0"}
    container["volumeMount"] = container.pop("volumeMounts")  # a misspelled field is caught
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(node0, "1.30", strict=True)


@pytest.mark.slow  # two torchrun "nodes" on loopback, each importing torch and the project: about 30 s
def test_two_nodes_train_one_model_through_the_c10d_rendezvous(tmp_path: Path) -> None:
    """The command lines KubernetesTorchrun gives its pods, run as two local processes with the
    rendezvous on 127.0.0.1: node 0 hosts the store, node 1 joins, and they train as 2 ranks."""
    training = TORCHRUN | {"nproc_per_node": 1, "nnodes": 2}
    path = write_config(tmp_path, {"training": training, "deployment": {"torchrun": "kubernetes"}})
    config = load_config(path)
    everything, instance = INGEST_ASSETS + TRAINING_ASSETS + CHECKS, dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        everything,
        selection=[*INGEST_ASSETS, TRAINING_ASSETS[0]],
        resources=build_resources(path),
        tags=tags,
        instance=instance,
    ).success
    storage = StorageResource.for_config(config)
    dataset_dir = storage.require(storage.dataset, "training_dataset")
    job = TrainingJob(config.model_dump_json(), str(dataset_dir), -1, str(tmp_path / "result.pt"), "", "", "")
    port = free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run"]
            + torchrun_args(config.training, f"127.0.0.1:{port}", "two-nodes", is_host=node == 0)
            + ["-m", "bmlt_assets.training.training_worker", job.to_json()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "2 rank(s) on gloo trained identical weights" in outputs[0] + outputs[1]
    data = load_dataset(dataset_dir, config)
    result = load_result(tmp_path / "result.pt", config, data)
    assert result.history and result.device == "cpu"
