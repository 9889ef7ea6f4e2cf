"""evaluation_report: the test-part report a quant decides on (metrics, calibration, baselines,
P&L after costs, bootstrap intervals, regimes), in MLflow, Dagster metadata and on disk."""

from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np

from bmlt_assets.core.checkpoint import ModelMeta
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import TrainingData, load_dataset
from bmlt_assets.core.evaluation import evaluate_stored_model, flat_metrics
from bmlt_assets.core.evaluation_report import EvaluationReport
from bmlt_assets.core.promotion import Verdict, gate, incomparability
from bmlt_assets.core.readable import rounded
from bmlt_assets.core.report import FrontMatter, Materiality, headline, ranked_warnings, report_warnings, write_report
from bmlt_assets.core.sources import BookSource
from bmlt_assets.provenance import git_commit
from bmlt_assets.training.asset import trained_model
from bmlt_resources.binance import with_market_fee
from bmlt_resources.mlflow import CHAMPION, RunTracker, TrackedMlflow
from bmlt_resources.pyfunc import score_steps
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource


@dg.asset(
    pool="evaluation_report",  # one writer at a time across runs (docs/design.md §9.5)
    deps=[trained_model],
    group_name="training",
    kinds={"mlflow"},
    description="Test-part metrics, calibration, baselines, P&L after costs, bootstrap CIs and per-regime metrics.",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: dg.ResourceParam[TrackedMlflow],
    book_source: dg.ResourceParam[BookSource],
) -> dg.MaterializeResult:
    config, tracker = settings.get(), mlflow.run_tracker()
    dataset_dir = storage.require(storage.dataset, "training_dataset")
    model_dir = storage.require(storage.model, "trained_model")
    challenger = ModelMeta.load(model_dir)
    champion = _champion(mlflow, config, load_dataset(dataset_dir, config), challenger.spec)
    context.log.info(champion.note)
    evaluation = with_market_fee(config.evaluation, config.data.market)
    report = evaluate_stored_model(config, evaluation, dataset_dir, model_dir, book_source, champion.probabilities)
    compared = champion.probabilities is not None
    verdict = gate(report.horizons, champion.exists, compared, config.promotion, champion.note, report.walk_forward)
    front = _front_matter(settings, mlflow, tracker, challenger, verdict, champion.note)
    with storage.commit(storage.report) as staging:
        embedded, _ = write_report(
            staging, report, f"Evaluation of {config.registered_model_name} on {config.target}", front
        )
    tracker.log_artifacts(storage.require(storage.report, "evaluation_report"), "report")
    tracker.log_metrics(flat_metrics(report))
    tracker.set_tags({"bmlt.model_run_id": challenger.mlflow_run_id})
    for materiality, warning in ranked_warnings(report):
        (context.log.error if materiality == Materiality.LEAK else context.log.warning)(warning.replace("**", ""))
    context.log.info(f"verdict: {verdict.sentence}")
    mlflow.promote(config.registered_model_name, challenger.registered_version, verdict)
    if verdict.promote:
        context.log.info(f"{config.registered_model_name} v{challenger.registered_version} promoted to @{CHAMPION}")
    return dg.MaterializeResult(metadata=_metadata(report, embedded, front, challenger))


@dataclass(frozen=True)
class Champion:
    exists: bool
    probabilities: np.ndarray | None  # its (N, H, C) test probabilities; None when it cannot be compared
    note: str  # why it was (not) compared


def _champion(mlflow: TrackedMlflow, config: PlatformConfig, data: TrainingData, spec: dict[str, Any]) -> Champion:
    """The current @champion, scored on the challenger's test part when it can be compared."""
    champion = mlflow.champion(config.registered_model_name)
    if champion is None:
        return Champion(False, None, "no champion yet: the first model that beats the baselines becomes champion")
    version, model = champion
    theirs = model.unwrap_python_model().spec
    test = data.parts["test"].steps
    why = incomparability(theirs, spec, (int(data.source.timestamps[test[0]]), int(data.source.timestamps[test[-1]])))
    if why:
        return Champion(
            True,
            None,
            f"champion v{version} is not comparable ({why}), so not replaced: to let the next model that "
            f"passes the gate become champion, delete the alias (mlflow.MlflowClient()"
            f".delete_registered_model_alias('{config.registered_model_name}', 'champion'))",
        )
    source = data.source
    probabilities = score_steps(model, source.base, source.mids, source.timestamps, test, theirs["window_steps"])
    return Champion(True, probabilities, f"compared with champion v{version} on the same test window")


def _front_matter(
    settings: SettingsResource,
    mlflow: TrackedMlflow,
    tracker: RunTracker,
    challenger: ModelMeta,
    verdict: Verdict,
    note: str,
) -> FrontMatter:
    """What the report says first: which model, run, config, code and data, and the gate's verdict.
    The aliases are the version's after this evaluation (@champion is added right after the report)."""
    config = settings.get()
    name, version = config.registered_model_name, str(challenger.registered_version)
    aliases = set(mlflow.tracking_client.get_model_version(name, version).aliases)
    return FrontMatter(
        model=name,
        version=version,
        aliases=sorted(aliases | ({CHAMPION} if verdict.promote else set())),
        run_id=tracker.run_id,
        run_url=tracker.url(config.mlflow.ui_url),
        config_name=config.name,
        config_path=settings.config_path,
        commit=git_commit(),
        data_range=f"{config.data.start_date} to {config.data.end_date} ({len(config.data.dates)} days)",
        verdict=verdict,
        verdict_note=note,
    )


def _metadata(report: EvaluationReport, embedded: str, front: FrontMatter, challenger: ModelMeta) -> dict[str, Any]:
    """The headline numbers (to the report's significant digits; those not measured left out), the
    headline and warnings, the report, and the verdict with what it rests on."""
    numbers: dict[str, dg.MetadataValue] = {}
    summary = []
    for i, entry in enumerate(report.horizons):
        model, pnl, fresh = entry.model.metrics, entry.model.pnl, report.fresh_at(i)
        values = {
            "model_accuracy": model.accuracy,
            "model_log_loss": model.log_loss,
            "margin_over_best_baseline_nats": entry.margin_over(entry.best_baseline).mean,
            "model_net_bps_per_trade": pnl.mean_return_bps,
            "model_edge_bps_per_trade": pnl.gross_mean_bps,
            "break_even_fee_bps": pnl.break_even_fee_bps,
        }
        if entry.capture is not None:
            values |= {"accuracy_capture": entry.capture.accuracy_capture}
            values |= {"logloss_capture": entry.capture.logloss_capture}
        if fresh:  # the fresh days pooled
            values |= {"fresh_logloss_capture": fresh[-1].logloss_capture.mean}
            values |= {"fresh_accuracy_capture": fresh[-1].accuracy_capture.mean}
        h = f"{entry.horizon_s}s"
        numbers |= {f"{name}_{h}": dg.MetadataValue.float(rounded(v)) for name, v in values.items() if v is not None}
        numbers[f"test_samples_{h}"] = dg.MetadataValue.int(entry.samples)
        if entry.independent_outcomes is not None:
            numbers[f"independent_outcomes_{h}"] = dg.MetadataValue.int(entry.independent_outcomes)
        summary += [f"**{entry.horizon_s} s**", "", *(f"- {line}" for line in headline(entry, fresh)), ""]
    summary += [f"> **WARNING** {w}\n" for w in report_warnings(report)]
    verdict = front.verdict
    assert verdict is not None
    return {
        **numbers,
        "headline": dg.MetadataValue.md("\n".join(summary)),
        "report": dg.MetadataValue.md(embedded),
        "promotion": dg.MetadataValue.md(
            f"**{verdict.outcome}** {verdict.grounds}\n\nChampion: {front.verdict_note}.\n\n"
            + "\n".join(f"- {reason}" for reason in verdict.reasons)
        ),
        "mlflow_run_id": front.run_id,
        "mlflow_run": dg.MetadataValue.url(front.run_url),
        "model_uri": challenger.model_uri,
    }
