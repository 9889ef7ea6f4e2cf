"""The promotion gate's rules."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from bmlt_assets.core.evaluation_report import HorizonReport, Interval
from bmlt_assets.core.promotion import gate, incomparability, promotion_verdict
from tests.helpers import report_entry

BETTER = Interval(mean=-0.05, low=-0.08, high=-0.02)
TIED = Interval(mean=-0.01, low=-0.04, high=0.01)


def test_beating_every_baseline_with_no_champion_promotes() -> None:
    verdict = promotion_verdict({"prior": BETTER, "logistic": BETTER}, None, ece=0.02, max_ece=0.05)
    assert verdict.promote


def test_a_baseline_within_noise_blocks_promotion_and_says_which() -> None:
    verdict = promotion_verdict({"prior": BETTER, "logistic": TIED}, None, ece=0.02, max_ece=0.05)
    assert not verdict.promote
    assert verdict.reasons == [
        "does not beat logistic: log-loss difference (challenger minus it) CI [-0.0400, 0.0100] includes 0 (a tie)"
    ]


def test_the_champion_must_be_beaten_beyond_noise() -> None:
    assert promotion_verdict({"prior": BETTER}, BETTER, ece=0.02, max_ece=0.05).promote
    worse = promotion_verdict({"prior": BETTER}, Interval(mean=0.03, low=0.01, high=0.05), ece=0.02, max_ece=0.05)
    assert not worse.promote and "champion" in worse.reasons[0]


def test_a_miscalibrated_challenger_is_not_promoted() -> None:
    verdict = promotion_verdict({"prior": BETTER}, None, ece=0.08, max_ece=0.05)
    assert not verdict.promote and verdict.reasons == ["ECE 0.0800 is not below 0.0500"]


def _entry(vs_champion: Interval, leak: bool = False, horizon_steps: int = 10) -> HorizonReport:
    """One horizon of an evaluation report: well calibrated, better than every baseline."""
    entry = report_entry()
    entry |= {
        "horizon_steps": horizon_steps,
        "horizon_s": horizon_steps * 2,  # a 2 s cadence: reasons speak in seconds, never in steps
        "leak_suspected": leak,
    }
    entry["metrics"]["model"] = {**entry["metrics"]["model"], "ece": 0.01}
    differences = {f"model_minus_{b}": asdict(BETTER) for b in ("prior", "persistence", "logistic_obi", "oracle")}
    entry["log_loss_differences"] = {**differences, "model_minus_champion": asdict(vs_champion)}
    return HorizonReport.from_json(entry)


def test_a_leak_flagged_challenger_with_better_numbers_is_refused() -> None:
    honest = gate([_entry(BETTER), _entry(BETTER, horizon_steps=30)], True, True, 0.05, "")
    assert honest.promote
    leaky = gate([_entry(BETTER), _entry(BETTER, leak=True, horizon_steps=30)], True, True, 0.05, "")
    assert not leaky.promote and leaky.reasons[0] == "60 s: probable look-ahead leak (beats the Bayes-optimal oracle)"
    first = gate([_entry(BETTER, leak=True)], False, False, 0.05, "no champion yet")
    assert not first.promote  # not even as the first champion


def test_a_stronger_champion_refuses_the_challenger() -> None:
    stronger = Interval(mean=0.04, low=0.02, high=0.06)  # challenger minus champion: worse
    verdict = gate([_entry(BETTER), _entry(stronger, horizon_steps=30)], True, True, 0.05, "")
    assert not verdict.promote
    assert (
        "60 s: does not beat the champion: log-loss difference (challenger minus it) CI [0.0200, 0.0600] lies "
        "entirely above 0 (the challenger is worse)" in verdict.reasons
    )


SPEC = {
    "target": "ETH/USDT",
    "symbols": ["BTC/USDT", "ETH/USDT"],
    "horizons_s": [10, 30],
    "n_classes": 8,
    "edges": "volatility_scaled",
    "levels": 10,
    "representation": {"kind": "hybrid", "raw_levels": 5},
    "cadence_ms": 1000,
    "window_steps": 40,
    "fitted_ns": [0, 1_000],
}


def test_the_champion_is_compared_only_like_for_like_and_never_on_its_own_training_data() -> None:
    test_window = (2_000, 3_000)
    assert incomparability(SPEC, SPEC, test_window) == ""
    for field, other in [
        ("target", "BTC/USDT"),
        ("horizons_s", [10, 60]),
        ("edges", "quantile"),
        ("representation", {"kind": "full", "raw_levels": 10}),
    ]:
        assert incomparability({**SPEC, field: other}, SPEC, test_window) == f"other {field}"
    assert "edges" in incomparability({k: v for k, v in SPEC.items() if k != "edges"}, SPEC, test_window)
    assert "longer window" in incomparability({**SPEC, "window_steps": 60}, SPEC, test_window)
    overlapping = {**SPEC, "fitted_ns": [0, 2_500]}  # trained on part of the challenger's test window
    assert "trained or validated on part of this test window" in incomparability(overlapping, SPEC, test_window)
    # Not comparable means not replaced: the gate refuses, naming why.
    refused = gate([_entry(BETTER)], True, False, 0.05, "champion v3 is not comparable (other edges)")
    assert not refused.promote and refused.reasons == ["champion v3 is not comparable (other edges)"]


@pytest.mark.slow  # the tiny pipeline trained and evaluated twice: about 16 s
def test_an_identical_challenger_does_not_replace_the_champion(tmp_path) -> None:
    """Training is reproducible, so a re-run yields the same model: it cannot beat the champion."""
    import json

    import dagster as dg
    import mlflow

    from bmlt_assets.core.config import load_config
    from bmlt_assets.definitions import INGEST_ASSETS, TRAINING_ASSETS, build_resources
    from bmlt_assets.partitions import range_tags
    from tests.helpers import write_config

    path = write_config(tmp_path, {"evaluation": {"promotion_max_ece": 1.0}})
    config = load_config(path)
    assets, instance = INGEST_ASSETS + TRAINING_ASSETS, dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        assets, selection=INGEST_ASSETS, resources=build_resources(path), instance=instance, tags=tags
    ).success
    assert dg.materialize(assets, selection=TRAINING_ASSETS, resources=build_resources(path), instance=instance).success
    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    name = config.registered_model_name
    client.set_registered_model_alias(name, "champion", "1")  # v1 is the champion, whatever the gate said

    second = dg.materialize(assets, selection=TRAINING_ASSETS, resources=build_resources(path), instance=instance)
    assert second.success
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert str(challenger.version) == "2"
    verdict = json.loads(
        Path(client.download_artifacts(challenger.run_id, "report/promotion.json", str(tmp_path))).read_text()
    )
    assert not verdict["promote"]
    assert any("does not beat the champion" in reason for reason in verdict["reasons"]), verdict["reasons"]
    for numbers in verdict["numbers"].values():
        assert abs(numbers["vs_champion"]["mean"]) < 1e-6  # the same model, the same predictions
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert challenger.tags["bmlt.promotion"].startswith("rejected")
