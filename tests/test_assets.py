"""Every asset materializes on a tiny config with a real (ephemeral) Dagster instance."""

from __future__ import annotations

import json
import os
from importlib import metadata as package_metadata
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import polars as pl
import pytest
import torch

from bmlt_assets.core.checkpoint import CHECKPOINT, load_checkpoint, spec_calibration
from bmlt_assets.core.config import PROJECT_ROOT, PlatformConfig, load_config
from bmlt_assets.core.windows import calendar, with_mid_path
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, TRAINING_ASSETS, build_definitions, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource

ALL_ASSETS = INGEST_ASSETS + TRAINING_ASSETS + CHECKS  # checks run (and must pass) with their assets
GRAPH_SNAPSHOT = Path(__file__).parent / "data" / "asset_graph.json"


def _graph(defs: dg.Definitions) -> dict[str, dict]:
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string(): {
            "deps": sorted(parent.to_user_string() for parent in graph.get(key).parent_keys),
            "partitioned": graph.get(key).partitions_def is not None,
        }
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
    }


@pytest.mark.parametrize("config", ["configs/default.yaml", "configs/binance.yaml", "configs/synthetic-hpo.yaml"])
def test_definitions_load_for_every_shipped_config(config: str) -> None:
    defs = build_definitions(PROJECT_ROOT / config)
    dg.Definitions.validate_loadable(defs)
    assert {job.name for job in defs.jobs} >= {"ingest_job", "training_job", "full_pipeline"}


def test_the_workspace_serves_every_shipped_config_side_by_side() -> None:
    """workspace.yaml's locations build, each under its own config's keys (those the scripts'
    `-m bmlt_assets.definitions` serves for that config), with the same lineage."""
    import yaml

    import bmlt_assets.locations

    served = {path.name: load_config(path).name for path in (PROJECT_ROOT / "configs").glob("*.yaml")}
    lineage = None
    seen: set[str] = set()
    entries = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())["load_from"]
    assert sorted(entry["python_module"]["location_name"] for entry in entries) == sorted(served.values())
    for entry in entries:
        module = entry["python_module"]
        graph = _graph(getattr(bmlt_assets.locations, module["attribute"])())
        prefix = module["location_name"] + "/"
        file = next(file for file, name in served.items() if name == module["location_name"])
        assert graph == _graph(build_definitions(PROJECT_ROOT / "configs" / file))  # the scripts' keys
        assert all(key.startswith(prefix) for key in graph)
        assert not seen & set(graph)  # no asset key is defined by two locations
        seen |= set(graph)
        renamed = {
            key.removeprefix(prefix): {**node, "deps": [d.removeprefix(prefix) for d in node["deps"]]}
            for key, node in graph.items()
        }
        assert lineage is None or renamed == lineage
        lineage = renamed
    assert lineage is not None and len(seen) == len(served) * len(lineage)


def test_asset_graph_matches_snapshot(tiny_config_path: Path) -> None:
    """Lineage changes must be deliberate: regenerate with BMLT_UPDATE_SNAPSHOTS=1."""
    graph = _graph(build_definitions(tiny_config_path))
    if os.environ.get("BMLT_UPDATE_SNAPSHOTS"):
        GRAPH_SNAPSHOT.write_text(json.dumps(graph, indent=2) + "\n")
    assert graph == json.loads(GRAPH_SNAPSHOT.read_text())


def _materialize(config_path: Path, selection, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        resources=build_resources(config_path),
        instance=dg.DagsterInstance.ephemeral(),
        **kwargs,
    )


def test_ingest_one_partition_then_a_range(tiny_config_path: Path, tiny_config: PlatformConfig) -> None:
    storage = StorageResource.for_config(tiny_config)
    first, second = tiny_config.data.dates
    result = _materialize(tiny_config_path, INGEST_ASSETS[:2], partition_key=first.isoformat())
    assert result.success
    snapshots = pl.read_parquet(storage.snapshots(first))
    assert snapshots["symbol"].unique().sort().to_list() == sorted(tiny_config.data.symbols)
    tensors = np.load(storage.tensors(first) / "base.npy", mmap_mode="r")
    assert tensors.shape == (8640, tiny_config.representation.levels, 4, 2)
    metadata = result.asset_materializations_for_node("book_tensors")[0].metadata
    assert metadata["shape_per_day"].value == [8640, tiny_config.representation.levels, 4, 2]
    assert 0.9 < metadata["valid_fraction"].value < 1.0

    result = _materialize(tiny_config_path, INGEST_ASSETS, tags=range_tags(first, second))
    assert result.success
    materialized = {m.partition for m in result.asset_materializations_for_node("forward_returns")}
    assert materialized == {first.isoformat(), second.isoformat()}
    returns = np.load(storage.returns(first) / "returns.npy")
    assert returns.shape == (8640, 2, 2)
    meta = json.loads((storage.returns(first) / "meta.json").read_text())
    assert meta["next_day_used"] is True  # day 1 labels read into day 2
    assert json.loads((storage.returns(second) / "meta.json").read_text())["next_day_used"] is False


def test_a_missing_upstream_partition_names_the_date_to_materialize(tiny_config_path: Path) -> None:
    result = _materialize(tiny_config_path, [INGEST_ASSETS[1]], partition_key="2025-01-06", raise_on_error=False)
    assert not result.success
    message = str(result.get_step_failure_events()[0].event_specific_data.error)
    assert "orderbook_snapshots for 2025-01-06 is missing" in message
    assert "--partition 2025-01-06" in message


def test_training_assets_log_register_and_report(tiny_config_path: Path, tiny_config: PlatformConfig) -> None:
    first, last = tiny_config.data.start_date, tiny_config.data.end_date
    assert _materialize(tiny_config_path, INGEST_ASSETS, tags=range_tags(first, last)).success
    result = _materialize(tiny_config_path, TRAINING_ASSETS)
    assert result.success

    dataset_meta = result.asset_materializations_for_node("training_dataset")[0].metadata
    assert dataset_meta["dagster/row_count"].value > 500
    assert "| train |" in dataset_meta["splits"].value
    report_meta = result.asset_materializations_for_node("evaluation_report")[0].metadata
    assert "| oracle |" in report_meta["report"].value and "| logistic_obi |" in report_meta["report"].value
    assert np.isfinite(report_meta["accuracy_capture_30s"].value)

    client = mlflow.MlflowClient(tracking_uri=tiny_config.tracking_uri)
    version = client.get_model_version_by_alias(tiny_config.registered_model_name, "challenger")
    run = client.get_run(version.run_id)
    assert run.data.tags["bmlt.partition_range"] == f"{first}..{last}"
    assert run.data.params["labels.horizons_s"] == "[30, 120]"
    assert len(client.get_metric_history(run.info.run_id, "val_log_loss")) >= 1
    assert "test_model_log_loss_30s" in run.data.metrics  # evaluation logged to the same MLflow run
    assert version.tags["bmlt.data_fingerprint"] == run.data.tags["bmlt.data_fingerprint"]

    # The promotion gate's verdict agrees with the report it was drawn from, and with the alias.
    report = json.loads((StorageResource.for_config(tiny_config).report / "metrics.json").read_text())["report"]
    # Costs a trader recognizes: Binance spot's taker fee by default, and the P&L at 0, 1x and 2x it.
    assert report[0]["costs"]["fee_bps_per_side"] == 10.0
    assert [level["fee_bps_per_side"] for level in report[0]["pnl_by_fee"]] == [0.0, 10.0, 20.0]
    assert report[0]["pnl_by_fee"][1]["total_return_bps"] == report[0]["pnl"]["model"]["total_return_bps"]
    assert "at no fee, at the assumed fee and at twice it" in report_meta["report"].value
    deserved = all(
        entry["log_loss_differences"][f"model_minus_{b}"]["high"] < 0
        for entry in report
        for b in ("prior", "persistence", "logistic_obi")
    ) and all(entry["metrics"]["model"]["ece"] < tiny_config.promotion.max_ece for entry in report)
    promoted = version.tags["bmlt.promotion"] == "promoted"
    assert promoted == deserved
    aliases = client.get_registered_model(tiny_config.registered_model_name).aliases
    assert ("champion" in aliases) == promoted
    # MLflow explains itself: the run is named after what was trained; the model and the version
    # describe it, and the version's description carries the whole verdict.
    assert run.info.run_name == tiny_config.run_name
    assert run.info.run_name.startswith(f"{tiny_config.name} {first}..{last} ")
    assert tiny_config.target in client.get_registered_model(tiny_config.registered_model_name).description
    described = client.get_model_version(tiny_config.registered_model_name, version.version).description
    verdict = json.loads(Path(client.download_artifacts(run.info.run_id, "report/promotion.json")).read_text())
    assert ("**PROMOTED to @champion**" in described) == promoted
    assert all(reason in described for reason in verdict["reasons"])
    # The verdict says what it rests on and, in the same sentence, whether the model makes money.
    sentence = version.tags["bmlt.verdict"]
    assert sentence == verdict["sentence"] and sentence in described.replace("**", "")
    loses = not all(e["pnl"]["model"]["trades"] and e["pnl"]["model"]["total_return_bps"] > 0 for e in report)
    assert ("LOSES money" in sentence) == loses and ("not a trading one" in sentence) == loses
    for entry in report:  # the economics, and the counts beside each other
        pnl, horizon = entry["pnl"]["model"], f"{entry['horizon_s']}s"
        if pnl["trades"]:
            assert pnl["break_even_fee_bps"] == pytest.approx(10.0 + pnl["mean_return_bps"] / 2)
        assert entry["samples"] / entry["horizon_steps"] <= entry["independent_outcomes"] < entry["samples"]
        assert report_meta[f"independent_outcomes_{horizon}"].value == entry["independent_outcomes"]
        assert report_meta[f"test_samples_{horizon}"].value == entry["samples"]
    assert report_meta["promotion"].value.startswith(f"**{'PROMOTED' if promoted else 'NOT PROMOTED'}")
    assert "- Money: at the stated costs (10 bps per side" in report_meta["headline"].value
    # The report opens with what was evaluated and the same verdict, each horizon named in seconds.
    front = (StorageResource.for_config(tiny_config).report / "report.md").read_text(encoding="utf-8")
    front = front[: front.index("## Headline")]
    assert f"| version | {version.version} |" in front and "@challenger" in front
    assert f"| MLflow run | [{run.info.run_id}](" in front and f"| data range | {first} to {last} " in front
    assert all(f"- {reason}" in front for reason in verdict["reasons"])
    assert all(reason.startswith(("30 s: ", "120 s: ")) for reason in verdict["reasons"])

    mlflow.set_tracking_uri(tiny_config.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{tiny_config.registered_model_name}@challenger")
    # The logged requirements are declared (not inferred by importing the model in a subprocess).
    model_uri = f"models:/{tiny_config.registered_model_name}@challenger"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    for package in ("torch", "bmlt"):
        assert f"{package}=={package_metadata.version(package)}" in requirements
    spec = model.metadata.get_input_schema().inputs
    assert [s.name for s in spec] == ["book", "mids", "timestamp_ns"]
    storage = StorageResource.for_config(tiny_config)
    base = np.load(storage.tensors(first) / "base.npy")
    mids = np.load(storage.tensors(first) / "mids.npy")
    stamps = np.load(storage.tensors(first) / "timestamps.npy")
    steps = np.array([4000, 4100])
    index = steps[:, None] + np.arange(-tiny_config.dataset.window_steps + 1, 1)
    probabilities = model.predict({"book": base[index], "mids": mids[index], "timestamp_ns": stamps[steps]})
    assert probabilities.shape == (2, 2, tiny_config.labels.n_classes)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    # The logged model applies each head's validation-fitted temperature and class bias.
    network, normalizer, checkpoint_spec = load_checkpoint(storage.model / CHECKPOINT)
    calibration = spec_calibration(checkpoint_spec)
    assert all(np.ptp(head.bias) > 0 for head in calibration)
    windows = normalizer.apply(with_mid_path(base[index].copy(), mids[index]))
    with torch.no_grad():
        logits = network(torch.from_numpy(windows), torch.from_numpy(calendar(stamps[steps]))).numpy()
    for h, head in enumerate(calibration):
        np.testing.assert_allclose(probabilities[:, h], head.probabilities(logits[:, h]), atol=1e-5)


def test_an_invalid_config_fails_the_run_with_the_field_path(tmp_path: Path, tiny_config_path: Path) -> None:
    resources = build_resources(tiny_config_path)
    # As if edited in the launchpad: the resource's config is validated again where it is used.
    valid = resources["settings"]
    resources["settings"] = SettingsResource(
        config_path=valid.config_path, config_json=valid.config_json.replace('"kind":"hybrid"', '"kind":"fancy"')
    )
    result = dg.materialize(
        ALL_ASSETS,
        selection=[INGEST_ASSETS[0]],
        resources=resources,
        partition_key="2025-01-06",
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    assert "representation.kind = 'fancy'" in str(result.get_step_failure_events()[0].event_specific_data.error)


def test_rematerializing_a_partition_is_byte_identical_with_the_same_data_version(tiny_config_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    versions = []
    for _ in range(2):
        result = dg.materialize(
            ALL_ASSETS,
            selection=INGEST_ASSETS[:2],
            resources=build_resources(tiny_config_path),
            instance=instance,
            partition_key="2025-01-06",
        )
        assert result.success
        versions.append(
            {
                node: result.asset_materializations_for_node(node)[0].tags["dagster/data_version"]
                for node in ("orderbook_snapshots", "book_tensors")
            }
        )
    assert versions[0] == versions[1]
    assert len(versions[0]["book_tensors"]) == 16
