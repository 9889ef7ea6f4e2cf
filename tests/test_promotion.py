"""The promotion gate's rules."""

from __future__ import annotations

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
