"""evaluation_report: the test-part report a quant decides on (metrics, calibration, baselines,
P&L after costs, bootstrap intervals, regimes), in MLflow, Dagster metadata and on disk."""

import json
from typing import Any

import dagster as dg
import numpy as np
from mlflow import MlflowClient, pyfunc
from mlflow.exceptions import MlflowException

from bmlt_assets.core.dataset import fold_count, load_dataset
from bmlt_assets.core.evaluation import evaluate, fold_summary
from bmlt_assets.core.promotion import Verdict, promotion_verdict
from bmlt_assets.core.report import write_report
from bmlt_assets.core.train import predict_logits
from bmlt_assets.scoring import CHECKPOINT, load_checkpoint, score_steps
from bmlt_assets.training import trained_model
from bmlt_resources.mlflow import MlFlow
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource, atomic_directory, write_json
from bmlt_resources.synthetic import SyntheticMarketResource

CHAMPION = "champion"
BASELINES = ("prior", "persistence", "logistic_obi")


@dg.asset(
    deps=[trained_model],
    group_name="training",
    kinds={"mlflow"},
    description="Test-part metrics, calibration, baselines, P&L after costs, bootstrap CIs and per-regime metrics.",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: dg.ResourceParam[MlFlow],
    book_source: dg.ResourceParam[Any],
) -> dg.MaterializeResult:
    config = settings.get()
    data = load_dataset(storage.require(storage.dataset, "training_dataset"), config)
    model_dir = storage.require(storage.model, "trained_model")
    model, _, spec = load_checkpoint(model_dir / CHECKPOINT)
    model_meta = json.loads((model_dir / "meta.json").read_text())

    market = book_source.market() if isinstance(book_source, SyntheticMarketResource) else None

    def oracle_for(fold_data):
        if market is None:
            return None
        return lambda i, steps, edges: market.oracle_at(config.target, fold_data.source.timestamps[steps], fold_data.horizons[i], edges)

    oracle = oracle_for(data)

    test_logits = predict_logits(model, data, data.parts["test"].steps)
    client = MlflowClient(tracking_uri=config.tracking_uri)
    champion_exists, champion, champion_note = _champion_probabilities(client, config, data, spec)
    context.log.info(champion_note)
    report = evaluate(data, test_logits, spec["temperatures"], oracle, config.evaluation, config.data.cadence_ms / 1000, champion)
    horizons = config.labels.horizons_s
    walk_forward = _walk_forward(config, storage, model_dir, oracle_for) if fold_count(config) > 1 else []
    title = f"Evaluation of {config.registered_model_name} on {config.target}"
    with atomic_directory(storage.report) as staging:
        embedded, _ = write_report(staging, report, horizons, title, walk_forward)
        write_json({"horizons_s": horizons, "report": report, "walk_forward": walk_forward}, staging / "metrics.json")
    mlflow.log_artifacts(str(storage.report), "report")

    metrics: dict[str, float] = {}
    for entry, horizon in zip(report, horizons):
        for predictor, values in entry["metrics"].items():
            metrics |= {f"test_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        for predictor, values in entry["pnl"].items():
            metrics |= {f"pnl_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        metrics |= {f"test_{name}_{horizon}s": value for name, value in entry.get("capture", {}).items()}
        metrics[f"test_leak_suspected_{horizon}s"] = float(entry.get("leak_suspected", False))
    for i, horizon in enumerate(horizons):
        for name in ("accuracy", "log_loss"):
            values = [fold["horizons"][i]["model"][name] for fold in walk_forward]
            if values:
                metrics |= {f"walk_forward_mean_{name}_{horizon}s": float(np.mean(values)), f"walk_forward_std_{name}_{horizon}s": float(np.std(values))}
    mlflow.log_metrics(metrics)
    mlflow.set_tag("bmlt.model_run_id", model_meta.get("mlflow_run_id", ""))
    for entry, horizon in zip(report, horizons):
        if entry.get("leak_suspected"):
            context.log.error(f"{horizon}s: the model beats the oracle beyond its CI: probable look-ahead leak")

    verdict = _gate(report, champion_exists, champion is not None, config.evaluation.promotion_max_ece, champion_note)
    name, version = config.registered_model_name, model_meta["registered_version"]
    if verdict.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        context.log.info(f"{name} v{version} promoted to @{CHAMPION}")
    client.set_model_version_tag(name, version, "bmlt.promotion", "promoted" if verdict.promote else "rejected: " + "; ".join(verdict.reasons))
    mlflow.log_metric("promotion_promoted", float(verdict.promote))
    mlflow.log_dict({"promote": verdict.promote, "reasons": verdict.reasons, "numbers": verdict.numbers}, "report/promotion.json")

    run = mlflow.active_run()
    headline = {
        f"{name}_{horizon}s": dg.MetadataValue.float(value)
        for entry, horizon in zip(report, horizons)
        for name, value in {**entry.get("capture", {}), "model_accuracy": entry["metrics"]["model"]["accuracy"], "model_log_loss": entry["metrics"]["model"]["log_loss"]}.items()
    }
    return dg.MaterializeResult(
        metadata={
            **headline,
            "report": dg.MetadataValue.md(embedded),
            "promotion": dg.MetadataValue.md(
                f"**{'promoted to @champion' if verdict.promote else 'not promoted'}** ({champion_note})\n\n"
                + "\n".join(f"- {reason}" for reason in verdict.reasons)
            ),
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": dg.MetadataValue.url(f"{config.mlflow.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"),
            "model_uri": model_meta.get("model_uri", ""),
        }
    )


def _champion_probabilities(client: MlflowClient, config, data, spec: dict[str, Any]) -> tuple[bool, np.ndarray | None, str]:
    """Whether a champion exists, its test probabilities (None if it cannot be compared), and why."""
    name = config.registered_model_name
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return False, None, "no champion yet: the first model that beats the baselines becomes champion"
    model = pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    theirs = model.unwrap_python_model().spec
    same = all(theirs[k] == spec[k] for k in ("levels", "symbols", "horizons_s", "n_classes", "cadence_ms"))
    if not same or theirs["window_steps"] > config.dataset.window_steps:
        return True, None, f"champion v{version.version} has other inputs or heads: not comparable, so not replaced"
    test = data.parts["test"]
    source = data.source
    probabilities = score_steps(model, source.base, source.mids, source.timestamps, test.steps, theirs["window_steps"])
    return True, probabilities, f"compared with champion v{version.version} on the same test window"


def _gate(report: list[dict[str, Any]], champion_exists: bool, has_champion: bool, max_ece: float, note: str) -> Verdict:
    """Every horizon must pass the gate; a champion that cannot be compared is never replaced."""
    if champion_exists and not has_champion:
        return Verdict(False, [note], {})
    verdicts = [
        promotion_verdict(
            {b: entry["log_loss_differences"][f"model_minus_{b}"] for b in BASELINES},
            entry["log_loss_differences"]["model_minus_champion"] if has_champion else None,
            entry["metrics"]["model"]["ece"],
            max_ece,
        )
        for entry in report
    ]
    reasons = [f"{entry['horizon_steps']} steps: {r}" for entry, v in zip(report, verdicts) for r in v.reasons]
    return Verdict(all(v.promote for v in verdicts), reasons, {str(e["horizon_steps"]): v.numbers for e, v in zip(report, verdicts)})


def _walk_forward(config, storage: StorageResource, model_dir, oracle_for) -> list[dict[str, Any]]:
    """Every fold's model on its own test block, oldest first: performance over time."""
    rows = []
    n_folds = fold_count(config)
    for k in range(n_folds):
        fold = load_dataset(storage.dataset, config, fold=k)
        checkpoint = model_dir / CHECKPOINT if k == n_folds - 1 else model_dir / f"fold{k}" / CHECKPOINT
        model, _, spec = load_checkpoint(checkpoint)
        logits = predict_logits(model, fold, fold.parts["test"].steps)
        summary = fold_summary(fold, logits, spec["temperatures"], oracle_for(fold))
        rows.append({"fold": k, **{key: value for key, value in summary.items() if not isinstance(key, int)}, "horizons": [summary[i] for i in range(len(fold.horizons))]})
    return rows
