"""The promotion gate's rules."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from bmlt_assets.core.config import PromotionConfig
from bmlt_assets.core.evaluation_report import Classification, FoldHorizon, FoldSummary, HorizonReport, Interval
from bmlt_assets.core.promotion import gate, incomparability, promotion_verdict
from tests.helpers import LOSING_PNL, report_entry

BETTER = Interval(mean=-0.05, low=-0.08, high=-0.02)
RULES = PromotionConfig(max_ece=0.05)  # the default: forecast quality only
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


def test_the_same_model_through_float32_does_not_beat_the_champion() -> None:
    """The champion is scored through its logged model (float32 probabilities): an identical
    challenger then "beats" it by about 1e-8 nats a sample, with a CI below 0, which is rounding."""
    rounding = Interval(mean=-5.7e-09, low=-8.0e-09, high=-3.4e-09)
    verdict = promotion_verdict({"prior": BETTER}, rounding, ece=0.02, max_ece=0.05)
    assert not verdict.promote
    assert verdict.reasons == [
        "does not beat the champion: log-loss difference (challenger minus it) CI [-8.00e-09, -3.40e-09] is within "
        "1e-06 nats of 0 (float32 rounding: a tie)"
    ]


def test_a_miscalibrated_challenger_is_not_promoted() -> None:
    verdict = promotion_verdict({"prior": BETTER}, None, ece=0.08, max_ece=0.05)
    assert not verdict.promote and verdict.reasons == ["ECE 0.0800 is not below 0.05"]


def _entry(
    vs_champion: Interval, leak: bool = False, horizon_steps: int = 10, model_pnl: dict | None = None
) -> HorizonReport:
    """One horizon of an evaluation report: well calibrated, better than every baseline."""
    entry = report_entry(model_pnl=model_pnl)
    entry |= {
        "horizon_steps": horizon_steps,
        "horizon_s": horizon_steps * 2,  # a 2 s cadence: reasons speak in seconds, never in steps
        "leak_suspected": leak,
    }
    entry["metrics"]["model"] = {**entry["metrics"]["model"], "ece": 0.01}
    differences = {
        f"model_minus_{b}": asdict(BETTER) for b in ("prior", "persistence", "logistic_obi", "gbm", "oracle")
    }
    entry["log_loss_differences"] = {**differences, "model_minus_champion": asdict(vs_champion)}
    return HorizonReport.from_json(entry)


def test_a_leak_flagged_challenger_with_better_numbers_is_refused() -> None:
    honest = gate([_entry(BETTER), _entry(BETTER, horizon_steps=30)], True, True, RULES, "")
    assert honest.promote
    leaky = gate([_entry(BETTER), _entry(BETTER, leak=True, horizon_steps=30)], True, True, RULES, "")
    assert not leaky.promote and leaky.reasons[0] == "60 s: probable look-ahead leak (beats the Bayes-optimal oracle)"
    first = gate([_entry(BETTER, leak=True)], False, False, RULES, "no champion yet")
    assert not first.promote  # not even as the first champion


def test_a_stronger_champion_refuses_the_challenger() -> None:
    stronger = Interval(mean=0.04, low=0.02, high=0.06)  # challenger minus champion: worse
    verdict = gate([_entry(BETTER), _entry(stronger, horizon_steps=30)], True, True, RULES, "")
    assert not verdict.promote
    assert (
        "60 s: does not beat the champion: log-loss difference (challenger minus it) CI [0.0200, 0.0600] lies "
        "entirely above 0 (the challenger is worse)" in verdict.reasons
    )


# 1,865 trades at 1 bps per side and 3.2 bps of costs per trade, as LOSING_PNL, but profitable
# beyond noise, and profitable within noise.
PROFIT = LOSING_PNL | {"mean_return_bps": 2.5, "total_return_bps": 4662.5, "gross_mean_bps": 5.7}
PROFIT |= {"break_even_fee_bps": 2.25, "mean_return_low_bps": 0.8, "mean_return_high_bps": 4.1}
NOISY = LOSING_PNL | {"mean_return_bps": 0.4, "total_return_bps": 746.0, "gross_mean_bps": 3.6}
NOISY |= {"break_even_fee_bps": 1.2, "mean_return_low_bps": -0.9, "mean_return_high_bps": 1.7}
FORECASTS = "on forecast quality (log loss against every baseline and the champion, and calibration)"


def test_by_default_the_verdict_is_on_forecasts_and_says_when_the_model_loses_money() -> None:
    losing = [_entry(BETTER, model_pnl=LOSING_PNL), _entry(BETTER, horizon_steps=30, model_pnl=PROFIT)]
    verdict = gate(losing, True, True, RULES, "")
    assert verdict.promote and verdict.profitable is False
    assert verdict.sentence == (
        f"PROMOTED to @champion {FORECASTS} alone, a statistical verdict and not a trading one: at the stated "
        "costs the model LOSES money: 20 s: -16.4 bps per trade net (95% CI [-16.9, -15.9]) over 1,865 trades at "
        "1 bps per side, an edge of -13.2 bps per trade before costs of 3.20 bps, break-even at a fee of -7.20 bps "
        "per side; 60 s: +2.50 bps per trade net (95% CI [0.800, 4.10]) over 1,865 trades at 1 bps per side, an "
        "edge of +5.70 bps per trade before costs of 3.20 bps, break-even at a fee of 2.25 bps per side."
    )
    assert verdict.numbers["20s"]["net_bps_per_trade"] == -16.4 and verdict.numbers["20s"]["fee_bps"] == 1.0
    profitable = gate([_entry(BETTER, model_pnl=PROFIT)], True, True, RULES, "")
    assert profitable.sentence.startswith(
        f"PROMOTED to @champion {FORECASTS} alone; at the stated costs the model also makes money: 20 s: +2.50 bps"
    )
    tied = gate([_entry(TIED, model_pnl=LOSING_PNL)], True, True, RULES, "")
    assert tied.sentence.startswith(f"NOT PROMOTED {FORECASTS} alone, a statistical verdict and not a trading one")


def test_require_profit_at_fee_refuses_a_model_that_does_not_make_money_beyond_noise() -> None:
    rules = PromotionConfig(max_ece=0.05, require_profit_at_fee=True)
    both = [_entry(BETTER, model_pnl=LOSING_PNL), _entry(BETTER, horizon_steps=30, model_pnl=PROFIT)]
    assert gate(both, True, True, RULES, "").promote  # off by default
    refused = gate(both, True, True, rules, "")
    assert not refused.promote
    assert refused.reasons[0] == "20 s: not profitable at 1 bps per side: it loses 16.4 bps per trade net"
    assert not any(reason.startswith("60 s: not profitable") for reason in refused.reasons)

    def reason(pnl: dict) -> str:
        verdict = gate([_entry(BETTER, model_pnl=pnl)], True, True, rules, "")
        assert not verdict.promote
        return verdict.reasons[0]

    assert reason(NOISY) == (
        "20 s: not profitable at 1 bps per side: its net mean return per trade's 95% CI [-0.900, 1.70] bps includes 0"
    )
    few = PROFIT | {"trades": 5, "mean_return_low_bps": None, "mean_return_high_bps": None}
    assert reason(few) == "20 s: not profitable at 1 bps per side: 5 trades are too few to tell"
    idle = LOSING_PNL | {"trades": 0, "mean_return_bps": 0.0, "total_return_bps": 0.0, "mean_return_low_bps": None}
    assert reason(idle) == "20 s: not profitable at 1 bps per side: it never traded"

    promoted = gate([_entry(BETTER, model_pnl=PROFIT)], True, True, rules, "")
    assert promoted.promote
    assert promoted.sentence.startswith(
        f"PROMOTED to @champion {FORECASTS} and on profit at the stated costs: 20 s: +2.50 bps per trade net "
        "(95% CI [0.800, 4.10])"
    )
    # Profit does not buy promotion: the forecasts must still beat the champion.
    weaker = gate([_entry(Interval(mean=0.04, low=0.02, high=0.06), model_pnl=PROFIT)], True, True, rules, "")
    assert not weaker.promote and "does not beat the champion" in weaker.reasons[0]


SPEC = {
    "target": "ETH/USDT",
    "symbols": ["BTC/USDT", "ETH/USDT"],
    "horizons_s": [10, 30],
    "n_classes": 8,
    "edges": "volatility_scaled",
    "labels": {"edges": "volatility_scaled", "volatility_edges": [-2.0, -1.0, 0.0, 1.0, 2.0], "vol_lookback_s": 300},
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
        ("representation", {"kind": "full", "raw_levels": 10}),
    ]:
        assert incomparability({**SPEC, field: other}, SPEC, test_window) == f"other {field}"
    assert "classes" in incomparability({k: v for k, v in SPEC.items() if k != "labels"}, SPEC, test_window)
    assert "longer window" in incomparability({**SPEC, "window_steps": 60}, SPEC, test_window)
    overlapping = {**SPEC, "fitted_ns": [0, 2_500]}  # trained on part of the challenger's test window
    assert "trained or validated on part of this test window" in incomparability(overlapping, SPEC, test_window)
    # Not comparable means not replaced: the gate refuses, naming why.
    refused = gate([_entry(BETTER)], True, False, RULES, "champion v3 is not comparable (other edges)")
    assert not refused.promote and refused.reasons == ["champion v3 is not comparable (other edges)"]


def test_a_champion_that_predicts_other_classes_is_not_comparable() -> None:
    """The same kind of edges is not the same classes: other multiples of the volatility, another
    volatility lookback, or quantile edges fitted on another training part are another question."""
    test_window = (2_000, 3_000)
    labels = SPEC["labels"]
    narrower = {**labels, "volatility_edges": [-1.0, -0.5, 0.0, 0.5, 1.0]}
    assert incomparability({**SPEC, "labels": narrower}, SPEC, test_window) == "other classes (volatility_edges)"
    longer = {**labels, "vol_lookback_s": 600}
    assert incomparability({**SPEC, "labels": longer}, SPEC, test_window) == "other classes (vol_lookback_s)"
    quantile = {"edges": "quantile", "fitted_edges": [[-0.0004, 0.0, 0.0004], [-0.0009, 0.0, 0.0009]]}
    refitted = {"edges": "quantile", "fitted_edges": [[-0.0005, 0.0, 0.0004], [-0.0009, 0.0, 0.0009]]}
    ours = {**SPEC, "labels": quantile}
    assert incomparability(ours, ours, test_window) == ""
    assert incomparability({**SPEC, "labels": refitted}, ours, test_window) == "other classes (fitted_edges)"
    kind = incomparability(ours, SPEC, test_window)
    assert kind.startswith("other classes (edges, ")


def test_the_spec_carries_the_classes_and_quantile_edges_as_fitted(tmp_path: Path) -> None:
    from bmlt_assets.core.calibration import Calibration
    from bmlt_assets.core.checkpoint import model_spec
    from bmlt_assets.core.config import load_config
    from bmlt_assets.core.dataset import build_dataset
    from tests.helpers import synthetic_days, write_config

    specs = []
    for k, fractions in enumerate([(0.7, 0.15, 0.15), (0.6, 0.2, 0.2)]):  # two training parts
        split = dict(zip(("train_fraction", "val_fraction", "test_fraction"), fractions))
        overrides = {"labels": {"edges": "quantile", "quantile_classes": 4}, "dataset": split}
        config = load_config(write_config(tmp_path, overrides, name=f"config{k}.yaml"))
        data = build_dataset(synthetic_days(config), config)
        specs.append(model_spec(config, data, [Calibration.identity(4)] * 2))
        np.testing.assert_allclose(specs[-1]["labels"]["fitted_edges"], data.parts["train"].edges[0], rtol=1e-12)
    assert specs[0]["labels"]["edges"] == "quantile" and len(specs[0]["labels"]["fitted_edges"]) == 2
    assert "other classes (fitted_edges)" in incomparability(specs[0], specs[1], (10**20, 10**20 + 1))


def test_a_leak_in_any_walk_forward_fold_refuses_the_challenger() -> None:
    scores = Classification(0.3, 0.3, 0.3, 0.1, 1.9, 0.8)

    def fold(k: int, leaks: tuple[bool, bool]) -> FoldSummary:
        return FoldSummary(k, 0, 1, 100, [FoldHorizon(scores, scores, None, leak) for leak in leaks])

    report = [_entry(BETTER), _entry(BETTER, horizon_steps=30)]
    verdict = gate(report, False, False, RULES, "no champion yet", [fold(0, (False, True)), fold(1, (False, False))])
    assert not verdict.promote
    assert verdict.reasons[0].startswith("60 s: probable look-ahead leak in walk-forward fold 0")
    assert gate(
        report, False, False, RULES, "no champion yet", [fold(0, (False, False)), fold(1, (False, False))]
    ).promote
    # The latest fold's test block is the test part, judged by the report's own leak flag.
    assert gate(
        report, False, False, RULES, "no champion yet", [fold(0, (False, False)), fold(1, (True, True))]
    ).promote


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

    path = write_config(tmp_path, {"promotion": {"max_ece": 1.0}})
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
