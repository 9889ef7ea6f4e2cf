"""The promotion gate's rules."""

from __future__ import annotations

from pathlib import Path

from bmlt_assets.core.promotion import promotion_verdict

BETTER = {"mean": -0.05, "low": -0.08, "high": -0.02}
TIED = {"mean": -0.01, "low": -0.04, "high": 0.01}


def test_beating_every_baseline_with_no_champion_promotes() -> None:
    verdict = promotion_verdict({"prior": BETTER, "logistic": BETTER}, None, ece=0.02, max_ece=0.05)
    assert verdict.promote


def test_a_baseline_within_noise_blocks_promotion_and_says_which() -> None:
    verdict = promotion_verdict({"prior": BETTER, "logistic": TIED}, None, ece=0.02, max_ece=0.05)
    assert not verdict.promote
    assert verdict.reasons == ["does not beat logistic: log-loss difference CI [-0.0400, 0.0100] reaches 0"]


def test_the_champion_must_be_beaten_beyond_noise() -> None:
    assert promotion_verdict({"prior": BETTER}, BETTER, ece=0.02, max_ece=0.05).promote
    worse = promotion_verdict({"prior": BETTER}, {"mean": 0.03, "low": 0.01, "high": 0.05}, ece=0.02, max_ece=0.05)
    assert not worse.promote and "champion" in worse.reasons[0]


def test_a_miscalibrated_challenger_is_not_promoted() -> None:
    verdict = promotion_verdict({"prior": BETTER}, None, ece=0.08, max_ece=0.05)
    assert not verdict.promote and verdict.reasons == ["ECE 0.0800 is not below 0.0500"]


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
    assert any("does not beat the champion" in reason for reason in verdict["reasons"])
    for numbers in verdict["numbers"].values():
        assert abs(numbers["vs_champion"]["mean"]) < 1e-6  # the same model, the same predictions
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert challenger.tags["bmlt.promotion"].startswith("rejected")
