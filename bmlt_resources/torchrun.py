"""Where ``trained_model`` runs torchrun (``training.launcher: torchrun``), through Dagster Pipes;
chosen by ``deployment.torchrun`` (``build_resources`` reads it), never by editing code.

- :class:`LocalTorchrun` (``local``, the default): a child process of the step,
  ``dg.PipesSubprocessClient``. On Kubernetes this is also the simple choice when the step's own
  pod has the GPUs (``deployment.step_resources.trained_model.gpus``).
- :class:`KubernetesTorchrun` (``kubernetes``): pods of their own (``deployment.torchrun_pods``),
  for a small step pod that hands training to GPU nodes. Node 0 is the Pipes pod
  (``dagster_k8s.PipesK8sClient``); with ``training.nnodes`` > 1 the step also starts the other
  nodes' pods and a headless Service that names node 0, whose torchrun hosts the c10d rendezvous.

The pods must see the data the step sees: the same shared volume (``data_volume_claim``) at the
same path, or the same object store (``storage.uri: s3://``; keys from ``env_from_secrets``). They
receive the MLflow variables through ``env``; credentials belong in ``env_from_secrets``, never in
the config.
"""

from __future__ import annotations

import sys
import uuid
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import dagster as dg

from bmlt_assets.core.config import LaunchedPods, PlatformConfig, TrainingConfig
from bmlt_assets.core.distributed import backend_problem, torchrun_args
from bmlt_resources.kubernetes import launched_namespace, pod_spec

NODE_LABEL = "bmlt/torchrun"  # value: the training's id; node 0 also carries bmlt/torchrun-node=0

# (the worker's arguments after torchrun's own, its environment, the training settings) -> the
# metadata rank 0 reported; raises when torchrun failed. What the training workflow calls, free of
# Dagster's step context.
Launch = Callable[[list[str], dict[str, str], TrainingConfig], dict[str, Any]]


class TorchrunLauncher(dg.ConfigurableResource):
    """Runs ``python -m torch.distributed.run ... WORKER_ARGS`` under a Pipes session of the step."""

    def bound(self, context: dg.AssetExecutionContext) -> Launch:
        """This launcher for the step of ``context``."""

        def launch(worker_args: list[str], env: dict[str, str], training: TrainingConfig) -> dict[str, Any]:
            invocation = self.launch(context, worker_args, env, training)
            return dict(invocation.get_materialize_result().metadata or {})

        return launch

    @abstractmethod
    def launch(
        self, context: dg.AssetExecutionContext, worker_args: list[str], env: dict[str, str], training: TrainingConfig
    ) -> dg.PipesClientCompletedInvocation:
        """The completed invocation, whose results the step reports; raises when torchrun failed."""


def torchrun_launcher(config: PlatformConfig) -> TorchrunLauncher:
    """The launcher ``deployment.torchrun`` names."""
    if config.deployment.torchrun == "kubernetes":
        return KubernetesTorchrun(pods_json=config.deployment.torchrun_pods.model_dump_json())
    return LocalTorchrun()


class LocalTorchrun(TorchrunLauncher):
    def launch(
        self, context: dg.AssetExecutionContext, worker_args: list[str], env: dict[str, str], training: TrainingConfig
    ) -> dg.PipesClientCompletedInvocation:
        # The ranks run here: a backend this machine cannot run fails now, in one line.
        problem = backend_problem(training.backend, training.nproc_per_node)
        if problem:
            raise RuntimeError(problem)
        command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(training), *worker_args]
        return dg.PipesSubprocessClient().run(context=context, command=command, env=env)


class KubernetesTorchrun(TorchrunLauncher):
    pods_json: str  # deployment.torchrun_pods (LaunchedPods) as JSON
    load_incluster_config: bool | None = None  # default: in-cluster when run inside a pod

    @property
    def pods(self) -> LaunchedPods:
        return LaunchedPods.model_validate_json(self.pods_json)

    def node_commands(self, worker_args: list[str], training: TrainingConfig, run: str) -> list[list[str]]:
        """Each node's command line, node 0 first (the rendezvous host)."""
        endpoint = f"bmlt-rdzv-{run}:{training.rdzv_port}"
        return [
            ["python", "-m", "torch.distributed.run", *torchrun_args(training, endpoint, run, node == 0), *worker_args]
            for node in range(training.nnodes)
        ]

    def rendezvous_service(self, run: str, training: TrainingConfig) -> dict[str, Any]:
        """A headless Service naming node 0's pod: every node reaches the c10d store through it."""
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"bmlt-rdzv-{run}", "namespace": launched_namespace(self.pods)},
            "spec": {
                "clusterIP": "None",
                "selector": {NODE_LABEL: run, f"{NODE_LABEL}-node": "0"},
                "ports": [{"name": "c10d", "port": training.rdzv_port}],
                "publishNotReadyAddresses": True,  # the store must be reachable before any readiness
            },
        }

    def node_pod(self, run: str, node: int, command: list[str], env: dict[str, str]) -> dict[str, Any]:
        """Node ``node`` (> 0) of a multi-node training: a plain pod, deleted by the step afterwards."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"bmlt-train-{run}-{node}",
                "namespace": launched_namespace(self.pods),
                "labels": {NODE_LABEL: run, f"{NODE_LABEL}-node": str(node)},
            },
            "spec": pod_spec(self.pods, command, env, "torchrun"),
        }

    def launch(
        self, context: dg.AssetExecutionContext, worker_args: list[str], env: dict[str, str], training: TrainingConfig
    ) -> dg.PipesClientCompletedInvocation:
        import kubernetes
        from dagster_k8s import PipesK8sClient  # the deployment's dependency, imported where it is used

        run = uuid.uuid4().hex[:10]
        commands = self.node_commands(worker_args, training, run)
        namespace = launched_namespace(self.pods)
        spec = pod_spec(self.pods, commands[0], {}, "torchrun")
        client = PipesK8sClient(load_incluster_config=self.load_incluster_config)
        core = kubernetes.client.CoreV1Api() if training.nnodes > 1 else None
        if core is not None:
            core.create_namespaced_service(namespace, self.rendezvous_service(run, training))
        try:
            for node, command in enumerate(commands[1:], start=1):
                assert core is not None
                core.create_namespaced_pod(namespace, self.node_pod(run, node, command, env))
            return client.run(
                context=context,
                image=spec["containers"][0]["image"],
                command=commands[0],
                env=env,
                namespace=namespace,
                base_pod_spec=spec,
                base_pod_meta={"labels": {NODE_LABEL: run, f"{NODE_LABEL}-node": "0"}},
            )
        finally:
            if core is not None:
                for node in range(1, training.nnodes):
                    core.delete_namespaced_pod(f"bmlt-train-{run}-{node}", namespace)
                core.delete_namespaced_service(f"bmlt-rdzv-{run}", namespace)
