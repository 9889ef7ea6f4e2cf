"""Pods and Jobs a step launches itself through the Kubernetes API: tuning workers
(``hpo.launcher: kubernetes``) and the extra nodes of a multi-node torchrun
(``deployment.torchrun: kubernetes``), shaped by ``deployment.*_pods`` (``LaunchedPods``).

The manifests are plain dicts, validated in the tests against the API schema; launching goes
through the official ``kubernetes`` client, in-cluster when run in a pod (the step's service
account must be allowed to create pods, services and jobs: the Dagster chart's is).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from bmlt_assets.core.config import LaunchedPods

log = logging.getLogger(__name__)
IMAGE_VARIABLE = "BMLT_IMAGE"  # the step pod's own image, set by the Helm values
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def launched_image(pods: LaunchedPods) -> str:
    image = pods.image or os.environ.get(IMAGE_VARIABLE)
    if not image:
        raise RuntimeError(
            f"no image for the pods to launch: set it in the config (deployment.*_pods.image) or ${IMAGE_VARIABLE} "
            "(deploy/helm/values.yaml sets it to the code location's image)"
        )
    return image


def launched_namespace(pods: LaunchedPods) -> str:
    if pods.namespace:
        return pods.namespace
    if NAMESPACE_FILE.exists():  # in a pod: its own
        return NAMESPACE_FILE.read_text().strip()
    return "default"


def pod_spec(
    pods: LaunchedPods, command: list[str], env: dict[str, str], name: str = "main", restart: str = "Never"
) -> dict[str, Any]:
    """A pod spec running ``command``: the secrets as environment, the data volume when one is
    named, a memory-backed /dev/shm (DataLoader workers and NCCL share memory through it; a
    container's default is 64 MiB), and the requests and limits (cpu requested, not capped)."""
    limits: dict[str, str] = {"memory": pods.memory} | ({"nvidia.com/gpu": str(pods.gpus)} if pods.gpus else {})
    mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    if pods.data_volume_claim:
        mounts.append({"name": "data", "mountPath": pods.data_mount_path})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": pods.data_volume_claim}})
    container = {
        "name": name,
        "image": launched_image(pods),
        "command": command,
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
        "envFrom": [{"secretRef": {"name": secret}} for secret in pods.env_from_secrets],
        "resources": {"requests": {"cpu": pods.cpu, "memory": pods.memory}, "limits": limits},
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {"restartPolicy": restart, "containers": [container], "volumes": volumes}
    if pods.node_selector:
        spec["nodeSelector"] = pods.node_selector
    if pods.tolerations:
        spec["tolerations"] = [toleration.model_dump(exclude_none=True) for toleration in pods.tolerations]
    if pods.service_account:
        spec["serviceAccountName"] = pods.service_account
    return spec


def worker_job(
    name: str, pods: LaunchedPods, command: list[str], env: dict[str, str], count: int, labels: dict[str, str]
) -> dict[str, Any]:
    """A Job of ``count`` pods that each run ``command`` once; none is retried (a failed worker
    fails the step, which decides), and the Job is deleted an hour after it ends."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": launched_namespace(pods), "labels": labels},
        "spec": {
            "parallelism": count,
            "completions": count,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(pods, command, env, "worker")},
        },
    }


def run_job(manifest: dict[str, Any], poll_s: float = 5.0, api: Any = None) -> None:
    """Create the Job, wait until all its pods succeeded, and delete it (with its pods) when this
    step stops; raises when one failed."""
    if api is None:
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        api = kubernetes.client.BatchV1Api()
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    completions = manifest["spec"]["completions"]
    api.create_namespaced_job(namespace, manifest)
    log.info("Kubernetes Job %s/%s: %s pod(s) started", namespace, name, completions)
    try:
        while True:
            status = api.read_namespaced_job_status(name, namespace).status
            if (status.failed or 0) > 0:
                raise RuntimeError(
                    f"Kubernetes Job {namespace}/{name}: {status.failed} pod(s) failed; "
                    f"their logs: kubectl -n {namespace} logs -l job-name={name}"
                )
            if (status.succeeded or 0) >= completions:
                log.info("Kubernetes Job %s/%s: all %s pod(s) succeeded", namespace, name, completions)
                return
            time.sleep(poll_s)
    finally:
        api.delete_namespaced_job(name, namespace, propagation_policy="Background")
