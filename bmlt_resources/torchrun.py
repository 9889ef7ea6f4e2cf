"""Where ``trained_model`` runs torchrun (``training.launcher: torchrun``), through Dagster Pipes.

- :class:`LocalTorchrun` (the default): a child process of the step, ``dg.PipesSubprocessClient``.
  On Kubernetes this is also the simple choice when the step's own pod has the GPUs
  (``deployment.executor: k8s`` with its GPUs in ``deployment.step_resources.trained_model``).
- :class:`KubernetesTorchrun`: a pod of its own, ``dagster_k8s.PipesK8sClient``, for a small step
  pod that hands training to a GPU node. The swap is the resource, one line in
  ``build_resources``::

      "torchrun": KubernetesTorchrun(image="registry/bmlt:1.0", data_volume_claim="bmlt-data", gpus=4),

  The pod must see the same data folder as the step (``PlatformConfig.local_dir``, where the
  dataset is staged and results handed back, on a shared volume at the same path) and receives the
  MLflow variables through ``env``; credentials for a tracking server belong in ``env_from_secrets``,
  never in the config.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import dagster as dg

from bmlt_assets.core.distributed import Backend, backend_problem

# (torchrun command line, its environment, backend, ranks) -> the metadata rank 0 reported; raises
# when torchrun failed. What the training workflow calls, free of Dagster's step context.
Launch = Callable[[list[str], dict[str, str], Backend, int], dict[str, Any]]


class TorchrunLauncher(dg.ConfigurableResource):
    """Runs a torchrun command line under a Pipes session of the step."""

    def bound(self, context: dg.AssetExecutionContext) -> Launch:
        """This launcher for the step of ``context``."""

        def launch(command: list[str], env: dict[str, str], backend: Backend, nproc: int) -> dict[str, Any]:
            invocation = self.launch(context, command, env, backend, nproc)
            return dict(invocation.get_materialize_result().metadata or {})

        return launch

    @abstractmethod
    def launch(
        self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str], backend: Backend, nproc: int
    ) -> dg.PipesClientCompletedInvocation:
        """The completed invocation, whose results the step reports; raises when torchrun failed."""


class LocalTorchrun(TorchrunLauncher):
    def launch(
        self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str], backend: Backend, nproc: int
    ) -> dg.PipesClientCompletedInvocation:
        # The ranks run here: a backend this machine cannot run fails now, in one line.
        problem = backend_problem(backend, nproc)
        if problem:
            raise RuntimeError(problem)
        return dg.PipesSubprocessClient().run(context=context, command=command, env=env)


class KubernetesTorchrun(TorchrunLauncher):
    image: str
    data_volume_claim: str  # a ReadWriteMany claim holding PlatformConfig.local_dir
    data_mount_path: str = "/data"  # where local_dir is in both the step's and the training pod
    namespace: str | None = None  # default: the current context's, or the step pod's
    gpus: int = 0  # nvidia.com/gpu per pod: one per rank with backend nccl
    cpu: str = "2"
    memory: str = "8Gi"
    env_from_secrets: list[str] = []  # e.g. the secret with MLFLOW_TRACKING_USERNAME/PASSWORD
    load_incluster_config: bool | None = None  # default: in-cluster when run inside a pod

    def pod_spec(self) -> dict[str, Any]:
        """The training pod: the data volume, a memory-backed /dev/shm (DataLoader workers and
        NCCL share memory through it; a container's default is 64 MiB) and the resources."""
        limits = {"cpu": self.cpu, "memory": self.memory} | ({"nvidia.com/gpu": str(self.gpus)} if self.gpus else {})
        return {
            "containers": [
                {
                    "resources": {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits},
                    "volumeMounts": [
                        {"name": "data", "mountPath": self.data_mount_path},
                        {"name": "shm", "mountPath": "/dev/shm"},
                    ],
                    "envFrom": [{"secretRef": {"name": name}} for name in self.env_from_secrets],
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": self.data_volume_claim}},
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
            ],
        }

    def launch(
        self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str], backend: Backend, nproc: int
    ) -> dg.PipesClientCompletedInvocation:
        from dagster_k8s import PipesK8sClient  # the deployment's dependency, imported where it is used

        client = PipesK8sClient(load_incluster_config=self.load_incluster_config)
        return client.run(
            context=context,
            image=self.image,
            command=command,
            env=env,
            namespace=self.namespace,
            base_pod_spec=self.pod_spec(),
        )
