"""The Dagster deployment: config switches, the instance configs, the Kubernetes manifests and the
Helm values, and a day-parallel backfill through the daemon on a real PostgreSQL instance.

Helm is not installed here, so the chart is not rendered: the values are checked against the keys
the chart's schema (1.13.27) defines, and the step Jobs are built with dagster-k8s itself, the way
its k8s_job_executor builds them, then validated with kubernetes-validate's offline schemas.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import k8s_job_executor

from bmlt_assets.backfill import submit_asset_backfill
from bmlt_assets.core.config import PROJECT_ROOT, ConfigError, StepName, load_config
from bmlt_assets.definitions import build_definitions, k8s_executor_config
from tests.helpers import write_config
from tests.services import Postgres

DEPLOY = PROJECT_ROOT / "deploy"
KUBERNETES_VERSION = "1.30"
BIN = Path(sys.executable).parent


def _instance_yaml(kind: str) -> dict:
    return yaml.safe_load((DEPLOY / "instance" / kind / "dagster.yaml").read_text())


def _helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


# --- config switches --------------------------------------------------------------------------


def test_by_default_steps_run_in_process_and_a_range_is_one_run(tiny_config_path: Path) -> None:
    definitions = build_definitions(tiny_config_path)
    for name in ("ingest_job", "training_job", "full_pipeline"):
        assert definitions.resolve_job_def(name).executor_def is dg.in_process_executor
    graph = definitions.resolve_asset_graph()
    policies = {key.to_user_string(): graph.get(key).backfill_policy for key in graph.get_all_asset_keys()}
    single = dg.BackfillPolicy.single_run()
    assert {name for name, policy in policies.items() if policy == single} == {
        "tiny/orderbook_snapshots",
        "tiny/book_tensors",
        "tiny/forward_returns",
    }


def test_multi_run_and_multiprocess_apply_to_every_partitioned_asset(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "deployment": {
                "backfill": "multi_run",
                "partitions_per_run": 2,
                "executor": "multiprocess",
                "max_concurrent": 3,
            }
        },
    )
    definitions = build_definitions(path)
    graph = definitions.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        expected = dg.BackfillPolicy.multi_run(2) if node.is_partitioned else None
        assert node.backfill_policy == expected, key
    executor = definitions.resolve_job_def("ingest_job").executor_def
    assert executor.name == "multiprocess"
    resolved = executor.config_schema.resolve_config({})
    assert resolved.success and resolved.value["config"]["max_concurrent"] == 3


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ({"backfill": "multi_run"}, "multi_run needs partitions_per_run"),
        ({"partitions_per_run": 3}, "applies to backfill multi_run only"),
        ({"backfill": "multi_run", "partitions_per_run": 0}, "partitions_per_run"),
        ({"max_concurrent": 2}, "in_process runs one step at a time"),
        ({"executor": "dask"}, "deployment.executor"),
        ({"step_resources": {"trained_model": {"gpus": 1}}}, "apply to executor k8s only"),
        ({"executor": "k8s", "step_resources": {"trained_modle": {"gpus": 1}}}, "trained_modle"),
        ({"executor": "k8s", "step_resources": {"trained_model": {"memory": "32GB"}}}, "not a Kubernetes quantity"),
        ({"executor": "k8s", "k8s": {"max_concurrent": 2}}, "use deployment.max_concurrent"),
        ({"executer": "k8s"}, "executer"),
    ],
)
def test_a_bad_deployment_section_is_refused_with_what_to_do(tmp_path: Path, deployment: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write_config(tmp_path, {"deployment": deployment}))


def test_a_misspelled_k8s_executor_key_fails_when_the_code_location_loads(tmp_path: Path) -> None:
    server = {"mlflow": {"tracking_uri": "http://mlflow:5000"}}
    good = write_config(
        tmp_path, {"deployment": {"executor": "k8s", "k8s": {"job_namespace": "bmlt"}}} | server, "good.yaml"
    )
    assert build_definitions(good).resolve_job_def("ingest_job").executor_def.name == "k8s"
    bad = write_config(
        tmp_path, {"deployment": {"executor": "k8s", "k8s": {"job_namespce": "bmlt"}}} | server, "bad.yaml"
    )
    with pytest.raises(ConfigError, match="job_namespce"):
        build_definitions(bad)


def test_step_resources_name_exactly_the_steps(tiny_config_path: Path) -> None:
    definitions = build_definitions(tiny_config_path)
    assert set(typing.get_args(StepName)) == {asset.op.name for asset in definitions.assets}


# --- Kubernetes -------------------------------------------------------------------------------


# What the chart sets on the K8sRunLauncher in the instance it writes (release "dagster").
CHART_RUN_LAUNCHER = {
    "dagster_home": "/opt/dagster/dagster_home",
    "instance_config_map": "dagster-instance",
    "postgres_password_secret": "dagster-postgresql-secret",
}


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kubeconfig naming an unreachable cluster: dagster-k8s loads one when its run launcher and
    step handler are built, and nothing here talks to the API."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "none"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "bmlt"}}],
                "current-context": "c",
            }
        )
    )
    return str(path)


def _location_container_context(location: dict) -> dict:
    """The container context the chart gives the code location's runs (includeConfigInLaunchedRuns):
    its env, secrets, volumes, security context and pod placement."""
    k8s = {
        "env_vars": [f"{variable['name']}={variable['value']}" for variable in location["env"]],
        "env_secrets": [secret["name"] for secret in location["envSecrets"]],
        "volume_mounts": location["volumeMounts"],
        "volumes": location["volumes"],
        "namespace": "bmlt",
        "security_context": location.get("securityContext", {}),
        "run_k8s_config": {"pod_spec_config": {"security_context": location.get("podSecurityContext", {})}},
    }
    return {"k8s": k8s}


def _step_job_manifest(step: str, kubeconfig: str, config_path: Path = DEPLOY / "config.yaml") -> dict:
    """The Job dagster-k8s's k8s_job_executor creates for ``step`` of the deploy config in the
    deployment the Helm values describe: its K8sStepHandler merges the run launcher's config (as
    the chart writes it), the code location's container context, the executor's config and the
    step's own, in that order; the Job is built from the merge as its launch_step builds it."""
    import kubernetes
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.executor import K8sStepHandler
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    values = _helm_values()
    launcher_values = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = K8sRunLauncher(
        **CHART_RUN_LAUNCHER,
        service_account_name="dagster",
        load_incluster_config=False,
        kubeconfig_file=kubeconfig,
        job_namespace="bmlt",
        env_secrets=[secret["name"] for secret in launcher_values.get("envSecrets", [])],
        run_k8s_config={"container_config": launcher_values["runK8sConfig"]["containerConfig"]},
    )
    deployment = load_config(config_path).deployment
    executor = process_config(k8s_job_executor.config_schema.config_type, k8s_executor_config(deployment))
    assert executor.success, executor.errors
    config = executor.value
    handler = K8sStepHandler(
        image=None,
        container_context=K8sContainerContext(
            env_secrets=config.get("env_secrets"),
            volume_mounts=config.get("volume_mounts"),
            volumes=config.get("volumes"),
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})),
        ),
        load_incluster_config=False,
        kubeconfig_file=kubeconfig,
        per_step_k8s_config=config["per_step_k8s_config"],
    )
    (location,) = values["dagster-user-deployments"]["deployments"]
    origin = SimpleNamespace(repository_origin=SimpleNamespace(container_context=_location_container_context(location)))
    context = SimpleNamespace(
        dagster_run=SimpleNamespace(job_code_origin=origin, tags={}),
        instance=SimpleNamespace(run_launcher=launcher),
        execute_step_args=SimpleNamespace(step_keys_to_execute=[step]),
        step_tags={step: {}},
        get_step_context=lambda key: SimpleNamespace(step=SimpleNamespace(op_name=key)),
    )
    merged = handler._get_container_context(context)  # type: ignore[arg-type]
    image = f"{location['image']['repository']}:{location['image']['tag']}"
    job = construct_dagster_k8s_job(
        job_config=merged.get_k8s_job_config(image, launcher),
        args=["dagster", "api", "execute_step", "{}"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        pod_name=f"dagster-step-{step.replace('_', '-')}",
        component="step_worker",
        user_defined_k8s_config=merged.run_k8s_config,
        labels={"dagster/op": step},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": step}],
    )
    return {"apiVersion": "batch/v1", "kind": "Job", **kubernetes.client.ApiClient().sanitize_for_serialization(job)}


SECRETS = {"bmlt-binance", "bmlt-tardis", "bmlt-s3", "bmlt-optuna", "bmlt-mlflow"}


@pytest.mark.parametrize("step", typing.get_args(StepName))
def test_every_rendered_step_job_is_a_valid_kubernetes_job(step: str, kubeconfig: str) -> None:
    import kubernetes_validate

    manifest = _step_job_manifest(step, kubeconfig)
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    wanted = load_config(DEPLOY / "config.yaml").deployment.step_resources[step]
    assert container["resources"]["requests"] == {
        "cpu": wanted.cpu,
        "memory": wanted.memory,
        "ephemeral-storage": wanted.ephemeral_storage,
    }
    assert container["resources"]["limits"].get("nvidia.com/gpu") == (str(wanted.gpus) if wanted.gpus else None)
    assert container["resources"]["limits"]["ephemeral-storage"] == wanted.ephemeral_storage
    assert "cpu" not in container["resources"]["limits"]  # requested, never throttled
    secrets = {source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source}
    assert secrets == SECRETS  # every secret a step may need reaches every step pod
    assert {"name": "BMLT_CONFIG", "value": "/opt/bmlt/deploy/config.yaml"} in container["env"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_only_the_gpu_step_goes_to_gpu_nodes_with_the_cuda_image(kubeconfig: str) -> None:
    import kubernetes_validate

    jobs = {step: _step_job_manifest(step, kubeconfig) for step in typing.get_args(StepName)}
    gpu = jobs.pop("trained_model")["spec"]["template"]["spec"]
    container = gpu["containers"][0]
    assert container["resources"]["limits"] == {"memory": "32Gi", "ephemeral-storage": "60Gi", "nvidia.com/gpu": "1"}
    assert container["image"] == "registry.example.com/bmlt:0.1.0-cu128"
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for step, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"], step
        assert not pod.get("nodeSelector") and not pod.get("tolerations") and not pod.get("affinity"), step
        assert pod["containers"][0]["image"] == "registry.example.com/bmlt:0.1.0", step

    broken = _step_job_manifest("trained_model", kubeconfig)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # a misspelled field is rejected
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_a_step_affinity_reaches_its_job_only(tmp_path: Path, kubeconfig: str) -> None:
    raw = yaml.safe_load((DEPLOY / "config.yaml").read_text())
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [zone]}
    ]}}}  # fmt: skip
    raw["deployment"]["step_resources"]["book_tensors"]["affinity"] = affinity
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    job = _step_job_manifest("book_tensors", kubeconfig, path)
    node_affinity = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [zone]}]
    assert "affinity" not in _step_job_manifest("forward_returns", kubeconfig, path)["spec"]["template"]["spec"]


# --- instance and run launcher configs ---------------------------------------------------------


def _check_instance(home: Path) -> None:
    """dagster.yaml in ``home`` against Dagster's instance schema, and each configurable part
    against its class's own schema, as DagsterInstance does when it starts."""
    from dagster._core.run_coordinator import DefaultRunCoordinator, QueuedRunCoordinator
    from dagster_postgres import DagsterPostgresStorage

    config, _ = dagster_instance_config(str(home))
    classes = {"QueuedRunCoordinator": QueuedRunCoordinator, "DefaultRunCoordinator": DefaultRunCoordinator}
    coordinator = config["run_coordinator"]
    checked = process_config(classes[coordinator["class"]].config_type(), coordinator.get("config") or {})
    assert checked.success, checked.errors
    if "postgres" in config.get("storage", {}):
        checked = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
        assert checked.success, checked.errors


def _postgres_environment(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    assert parts.scheme == "postgresql+psycopg2"
    return {
        "DAGSTER_PG_USERNAME": parts.username or "",
        "DAGSTER_PG_PASSWORD": parts.password or "",
        "DAGSTER_PG_HOST": parts.hostname or "",
        "DAGSTER_PG_PORT": str(parts.port),
        "DAGSTER_PG_DB": parts.path.lstrip("/"),
    }


@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_the_instance_configs_pass_dagsters_schema_and_a_misspelled_key_does_not(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _postgres_environment("postgresql+psycopg2://dagster@db.example:5432/dagster").items():
        monkeypatch.setenv(name, value)  # the env: sources must resolve
    home = tmp_path / kind
    home.mkdir()
    raw = _instance_yaml(kind)
    (home / "dagster.yaml").write_text(yaml.safe_dump(raw))
    _check_instance(home)

    broken = tmp_path / f"{kind}-misspelled"
    broken.mkdir()
    misspelled = {**raw, "run_coordinater": raw["run_coordinator"]}
    (broken / "dagster.yaml").write_text(yaml.safe_dump(misspelled))
    with pytest.raises(Exception, match="run_coordinater"):
        dagster_instance_config(str(broken))
    if kind == "postgres":
        queued = {**raw["run_coordinator"], "config": {"max_concurent_runs": 2}}
        (broken / "dagster.yaml").write_text(yaml.safe_dump({**raw, "run_coordinator": queued}))
        with pytest.raises(AssertionError, match="max_concurent_runs"):
            _check_instance(broken)


def test_make_uses_the_local_instance_config() -> None:
    assert (PROJECT_ROOT / ".dagster_home" / "dagster.yaml").samefile(DEPLOY / "instance" / "local" / "dagster.yaml")


def test_the_charts_run_launcher_and_coordinator_config_pass_dagsters_schema() -> None:
    """The K8sRunLauncher config the chart writes into the instance from our values (its template
    maps runK8sConfig.containerConfig to run_k8s_config.container_config, and always sets the
    fields below), against dagster-k8s's schema; the coordinator matches the Postgres instance's."""
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher

    values = _helm_values()
    ours = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = {
        "load_incluster_config": True,
        "image_pull_policy": "IfNotPresent",
        "service_account_name": "dagster",
        **CHART_RUN_LAUNCHER,
        "run_k8s_config": {"container_config": ours["runK8sConfig"]["containerConfig"]},
    }
    checked = process_config(K8sRunLauncher.config_type(), launcher)
    assert checked.success, checked.errors
    misspelled = {**launcher, "run_k8s_confg": launcher.pop("run_k8s_config")}
    assert not process_config(K8sRunLauncher.config_type(), misspelled).success

    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    instance = _instance_yaml("postgres")
    assert {"dequeue_interval_seconds": coordinator["dequeueIntervalSeconds"]} == instance["run_coordinator"]["config"]
    assert process_config(QueuedRunCoordinator.config_type(), instance["run_coordinator"]["config"]).success
    assert values["global"]["postgresqlSecretName"] == CHART_RUN_LAUNCHER["postgres_password_secret"]
    # The chart writes `concurrency` into the instance as the Postgres instance has it: one set of limits.
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert {
        "runs": {
            "max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
            "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"],
        },
        "pools": {
            "granularity": concurrency["pools"]["granularity"],
            "default_limit": concurrency["pools"]["defaultLimit"],
        },
    } == instance["concurrency"]
    # Compute logs on S3 (dagster-aws's manager, config as the chart maps it) and the managed loggers.
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    ours = logs["config"]["s3ComputeLogManager"]
    mapped = {"bucket": ours["bucket"], "prefix": ours["prefix"], "upload_interval": ours["uploadInterval"]}
    assert process_config(S3ComputeLogManager.config_type(), mapped).success
    assert values["pythonLogs"]["managedPythonLoggers"] == instance["python_logs"]["managed_python_loggers"]


def test_each_backfill_gets_its_own_two_run_slots() -> None:
    """The instance's tag limit, applied by Dagster's own counter (the QueuedRunCoordinator's): two
    runs of backfill A block a third of A but not a run of backfill B. Without
    applyLimitPerUniqueValue the limit of 2 was shared by every backfill."""
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    limits = _instance_yaml("postgres")["concurrency"]["runs"]["tag_concurrency_limits"]

    def run(backfill: str) -> SimpleNamespace:
        return SimpleNamespace(tags={"dagster/backfill": backfill})

    counter = TagConcurrencyLimitsCounter(limits, [run("a"), run("a")])  # type: ignore[list-item]
    assert counter.is_blocked(run("a"))  # type: ignore[arg-type]
    assert not counter.is_blocked(run("b"))  # type: ignore[arg-type]
    counter.update_counters_with_launched_item(run("b"))  # type: ignore[arg-type]
    counter.update_counters_with_launched_item(run("b"))  # type: ignore[arg-type]
    assert counter.is_blocked(run("b"))  # type: ignore[arg-type]


# Keys of the Dagster chart's values schema (helm/dagster/schema, 1.13.x) for the parts we set.
CHART_KEYS = {
    "top": {
        "dagster-user-deployments", "runLauncher", "dagsterDaemon", "postgresql",
        "generatePostgresqlPasswordSecret", "global", "telemetry", "concurrency",
        "dagsterWebserver", "computeLogManager", "scheduler", "pythonLogs", "ingress", "imagePullSecrets",
    },
    "userDeployment": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port", "env",
        "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
        "labels", "volumeMounts", "volumes", "schedulerName",
    },
    "k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig",
    },
    "runK8sConfig": {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"},
    "queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers", "dequeueUseThreads",
    },
    "postgresql": {
        "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword", "postgresqlDatabase",
        "postgresqlParams", "postgresqlScheme", "service",
    },
}  # fmt: skip


def test_the_helm_values_use_only_keys_the_chart_defines_in_its_shapes() -> None:
    values = _helm_values()
    assert set(values) <= CHART_KEYS["top"]
    (location,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    assert set(location) <= CHART_KEYS["userDeployment"]
    assert location["dagsterApiGrpcArgs"] == ["-m", "bmlt_assets.definitions"]
    assert location["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert all(set(secret) == {"name"} for secret in location["envSecrets"])  # names, never values
    assert all(set(variable) == {"name", "value"} for variable in location["env"])
    assert not {"name": "BMLT_CONFIG"}.items() - location["env"][0].items()
    image = f"{location['image']['repository']}:{location['image']['tag']}"
    assert {"name": "BMLT_IMAGE", "value": image} in location["env"]  # what launched pods and MLflow runs name
    config_in_image = Path(location["env"][0]["value"]).relative_to("/opt/bmlt")
    assert (PROJECT_ROOT / config_in_image).is_file()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "WORKDIR /opt/bmlt" in dockerfile and f"COPY {config_in_image} {config_in_image}" in dockerfile
    assert "torch==2.13.0" in dockerfile and '"torch==2.13.0"' in (PROJECT_ROOT / "pyproject.toml").read_text()
    # Non-root, and the commit recorded at build time (the image has no .git).
    assert re.search(r"^USER 10001$", dockerfile, re.M) and location["podSecurityContext"]["runAsUser"] == 10001
    assert re.search(r"^ARG GIT_COMMIT$", dockerfile, re.M) and "BMLT_GIT_COMMIT=${GIT_COMMIT}" in dockerfile

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert set(launcher) <= CHART_KEYS["k8sRunLauncher"]
    assert set(launcher["runK8sConfig"]) <= CHART_KEYS["runK8sConfig"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    assert set(coordinator["config"]) == {"queuedRunCoordinator"}
    assert set(coordinator["config"]["queuedRunCoordinator"]) <= CHART_KEYS["queuedRunCoordinator"]
    postgresql = values["postgresql"]
    assert set(postgresql) <= CHART_KEYS["postgresql"] and "postgresqlPassword" not in postgresql
    assert postgresql["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["generatePostgresqlPasswordSecret"] is False

    # Every secret the values name is one deploy/README.md creates, and only by name.
    readme = (DEPLOY / "README.md").read_text()
    created = set(re.findall(r"kubectl -n bmlt create secret generic ([a-z0-9-]+)", readme))
    server_secrets = {values["global"]["postgresqlSecretName"], "bmlt-mlflow-server"}  # Dagster's and MLflow's
    assert {secret["name"] for secret in location["envSecrets"]} == SECRETS
    assert SECRETS | server_secrets == created


# --- Postgres instance, daemon and a day-parallel backfill ------------------------------------


def _launched_at(instance: dg.DagsterInstance, run_id: str) -> float:
    (launched,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_STARTING)
    return launched.timestamp


@pytest.mark.slow
def test_a_multi_run_backfill_runs_two_days_per_run_two_runs_at_once_on_postgres(
    tmp_path: Path, postgres: Postgres
) -> None:
    """deploy/instance/postgres on a real PostgreSQL: a multi_run(2) backfill of 4 days, submitted
    as the UI submits one, queued by the QueuedRunCoordinator and launched by `dagster-daemon run`."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((DEPLOY / "instance" / "postgres" / "dagster.yaml").read_text())
    days = [dt.date(2025, 1, 6) + dt.timedelta(days=offset) for offset in range(4)]
    config_path = write_config(
        tmp_path,
        {
            "data": {"start_date": days[0].isoformat(), "end_date": days[-1].isoformat()},
            "deployment": {"backfill": "multi_run", "partitions_per_run": 2},
        },
    )
    env = {
        **os.environ,
        **_postgres_environment(postgres.create_database()),
        "DAGSTER_HOME": str(home),
        "BMLT_CONFIG": str(config_path),
    }
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # this process reads the same instance
    daemon = None
    try:
        instance = dg.DagsterInstance.get()
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        definitions = build_definitions(config_path)
        # The day-local assets: their backfill is exactly the 2 runs of 2 days.
        assets = [dg.AssetKey(["tiny", "orderbook_snapshots"]), dg.AssetKey(["tiny", "book_tensors"])]
        backfill_id = submit_asset_backfill(instance, definitions, assets, days)
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "bmlt_assets.definitions"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=(tmp_path / "daemon.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        filters = dg.RunsFilter(tags={"dagster/backfill": backfill_id})
        while time.monotonic() < deadline:
            runs = instance.get_run_records(filters)
            if len(runs) == 2 and all(record.dagster_run.is_finished for record in runs):
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-4000:]
            time.sleep(1)
        else:
            pytest.fail(f"the backfill's runs did not finish: {(tmp_path / 'daemon.log').read_text()[-4000:]}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    assert [record.dagster_run.status for record in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    ranges = sorted(
        (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"])
        for run in (record.dagster_run for record in runs)
    )
    assert ranges == [(days[0].isoformat(), days[1].isoformat()), (days[2].isoformat(), days[3].isoformat())]
    assert all(set(record.dagster_run.asset_selection or ()) == set(assets) for record in runs)
    # Day-parallel: the daemon launched each run before the other ended (in flight together), and
    # never more than the limit of 2 at once. Launched, not started: on tiny days a run's work
    # takes less than its worker's start-up, so "started" alone would measure that jitter.
    spans = [(_launched_at(instance, record.dagster_run.run_id), record.end_time) for record in runs]
    assert all(end is not None for _, end in spans)
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    assert max(sum(start <= moment < end for start, end in spans) for moment, _ in spans) <= 2
    stored = instance.get_materialized_partitions(dg.AssetKey(["tiny", "book_tensors"]))
    assert stored == {day.isoformat() for day in days}


def test_bmlt_backfill_queues_exactly_the_days_of_the_daily_assets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bmlt_assets.cli import main

    path = write_config(tmp_path, {"deployment": {"backfill": "multi_run", "partitions_per_run": 1}})
    assert main(["backfill", "--config", str(path), "--from", "2025-01-06", "--to", "2025-01-07"]) == 0
    (backfill,) = dg.DagsterInstance.get().get_backfills()
    assert backfill.backfill_id in capsys.readouterr().out
    target = {
        (item.asset_key.to_user_string(), item.partition_key)
        for item in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()
    }
    days = ("2025-01-06", "2025-01-07")
    assert target == {
        (f"tiny/{name}", day) for name in ("orderbook_snapshots", "book_tensors", "forward_returns") for day in days
    }

    assert main(["backfill", "--config", str(path), "--from", "2025-01-07", "--to", "2025-01-06"]) == 2
    assert "before --from" in capsys.readouterr().err
    monkeypatch.delenv("DAGSTER_HOME")
    assert main(["backfill", "--config", str(path)]) == 2
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err


@pytest.mark.slow  # a dagster-webserver process on loopback: about 40 s
def test_bmlt_backfill_goes_through_the_webserver_from_a_machine_without_an_instance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bmlt_assets.cli import main
    from tests.services import free_port, wait_for_port

    home = tmp_path / "home"
    home.mkdir()
    path = write_config(tmp_path, {"deployment": {"backfill": "multi_run", "partitions_per_run": 1}})
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "BMLT_CONFIG": str(path)}
    webserver = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-m", "bmlt_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, webserver, "dagster-webserver", timeout_s=120)
        monkeypatch.delenv("DAGSTER_HOME")  # this "machine" has no instance config at all
        argv = ["backfill", "--config", str(path), "--from", "2025-01-06", "--to", "2025-01-07"]
        code = main([*argv, "--webserver", f"http://127.0.0.1:{port}"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        bad = main([*argv, "--webserver", f"http://127.0.0.1:{free_port()}"])
        assert bad == 2 and "did not answer" in capsys.readouterr().err
    finally:
        webserver.terminate()
        webserver.wait(timeout=60)
    (backfill,) = dg.DagsterInstance.from_config(str(home)).get_backfills()
    assert backfill.backfill_id in captured.out
    target = {
        (item.asset_key.to_user_string(), item.partition_key)
        for item in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()
    }
    assert target == {
        (f"tiny/{name}", day)
        for name in ("orderbook_snapshots", "book_tensors", "forward_returns")
        for day in ("2025-01-06", "2025-01-07")
    }


def test_the_platform_manifests_are_valid_and_the_volume_names_a_shared_class() -> None:
    import kubernetes_validate

    volume = yaml.safe_load((DEPLOY / "k8s" / "data-volume.yaml").read_text())
    kubernetes_validate.validate(volume, KUBERNETES_VERSION, strict=True)
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"] and volume["spec"]["storageClassName"]
    assert (
        volume["metadata"]["name"]
        == _helm_values()["dagster-user-deployments"]["deployments"][0]["volumes"][0]["persistentVolumeClaim"][
            "claimName"
        ]
    )
    readme = (DEPLOY / "README.md").read_text()
    for shared in ("efs-sc", "standard-rwx", "azurefile-csi"):  # the documented options per cloud
        assert shared in readme
    deployment, service = yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text())
    for manifest in (deployment, service):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert any(arg.startswith("--artifacts-destination=") for arg in container["args"])
    assert {source["secretRef"]["name"] for source in container["envFrom"]} == {"bmlt-mlflow-server", "bmlt-s3"}
    config = load_config(DEPLOY / "config.yaml")
    assert config.mlflow.tracking_uri == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert config.shared_state_problem() is None


def test_bmlt_validate_refuses_local_ml_state_when_steps_spread_over_machines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bmlt_assets.cli import main

    spread = write_config(tmp_path, {"deployment": {"executor": "k8s"}}, "spread.yaml")
    assert main(["validate", "--config", str(spread)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1
    assert "deployment.executor k8s" in line and "mlflow.tracking_uri (unset, so sqlite:///" in line
    assert "set mlflow.tracking_uri to a tracking server" in line
    hpo = {"enabled": True, "search_space": {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.01}}}
    s3 = {"storage": {"uri": "s3://bucket/runs"}, "mlflow": {"tracking_uri": "http://mlflow:5000"}, "hpo": hpo}
    on_s3 = write_config(tmp_path, s3, "s3.yaml")
    assert main(["validate", "--config", str(on_s3)]) == 2
    line = capsys.readouterr().err
    assert (
        "storage.uri s3://bucket/runs" in line and "hpo.storage (sqlite)" in line and "mlflow" not in line.split(",")[0]
    )
    with pytest.raises(ConfigError, match="keep state on one machine's disk"):
        build_definitions(spread)  # the code location refuses it too
    shared = write_config(
        tmp_path, {**s3, "hpo": {**hpo, "storage": "database"}, "deployment": {"executor": "k8s"}}, "shared.yaml"
    )
    assert main(["validate", "--config", str(shared)]) == 0
    assert main(["validate", "--config", str(write_config(tmp_path, {}, "local.yaml"))]) == 0  # one machine: fine
