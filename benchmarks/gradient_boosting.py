"""The gradient-boosted baseline: scikit-learn's HistGradientBoosting against LightGBM, same features and settings.

    python -m benchmarks.gradient_boosting [--config configs/default.yaml] [--threads 1] [--rounds 3]

LightGBM is not a dependency of the platform: install it into the environment first
(``pip install lightgbm``) to run the comparison. The data of the config is built once (as
``benchmarks.seeds`` builds it); both libraries then fit every horizon on the training part's
order-flow features with early stopping on the purged validation part and are calibrated there,
as ``core/gradient_boosting.py`` does, ``--rounds`` times each (interleaved: fit times are
medians). Printed and written (``--out``): test log loss and accuracy, the paired log-loss
difference (LightGBM minus HistGradientBoosting, 95% block-bootstrap CI), both against the
logistic baseline, and the fit time ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from statistics import median

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.seeds import build_data
from bmlt_assets.core.calibration import fit_calibration
from bmlt_assets.core.config import load_config
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.gradient_boosting import SETTINGS, fit_gradient_boosting, sample_features
from bmlt_assets.core.metrics import classification_metrics, logistic_baseline, order_book_features
from bmlt_assets.core.uncertainty import independent_outcomes, mean_interval

ROOT = Path(__file__).resolve().parent.parent


def lightgbm_probabilities(data, i: int, features: dict[str, np.ndarray], threads: int) -> np.ndarray:
    """LightGBM with HistGradientBoosting's settings, early-stopped and calibrated on validation."""
    import lightgbm

    train, val = data.parts["train"], data.parts["val"]
    model = lightgbm.LGBMClassifier(
        learning_rate=SETTINGS["learning_rate"],
        n_estimators=SETTINGS["max_iter"],
        num_leaves=SETTINGS["max_leaf_nodes"],
        min_child_samples=SETTINGS["min_samples_leaf"],
        reg_lambda=SETTINGS["l2_regularization"],
        n_jobs=threads,
        verbose=-1,
        random_state=0,
    )
    model.fit(
        features["train"],
        train.classes[:, i],
        eval_set=[(features["val"], val.classes[:, i])],
        callbacks=[lightgbm.early_stopping(SETTINGS["n_iter_no_change"], verbose=False)],
    )

    def log_p(x: np.ndarray) -> np.ndarray:
        raw = np.zeros((len(x), data.n_classes))
        raw[:, model.classes_] = model.predict_proba(x)
        return np.log(np.clip(raw, 1e-12, 1.0))

    outcomes = independent_outcomes(val.steps, data.horizons[i])
    return fit_calibration(log_p(features["val"]), val.classes[:, i], outcomes).probabilities(log_p(features["test"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gradient_boosting.json")
    args = parser.parse_args()
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as folder:
        build_data(config, Path(folder))
        data = load_dataset(Path(folder), config)
        parts = data.parts
        features = {name: sample_features(data, part.steps) for name, part in parts.items()}
        seconds: dict[str, list[float]] = {"hist_gradient_boosting": [], "lightgbm": []}
        probabilities: dict[str, list[np.ndarray]] = {}
        for _ in range(args.rounds):
            started = time.perf_counter()
            fitted = fit_gradient_boosting(data, seed=0, threads=args.threads)
            seconds["hist_gradient_boosting"].append(time.perf_counter() - started)
            probabilities["hist_gradient_boosting"] = [f.probabilities(features["test"]) for f in fitted]
            started = time.perf_counter()
            with threadpool_limits(args.threads):
                # The features again, as fit_gradient_boosting computes them inside its timing.
                fitting = {name: sample_features(data, parts[name].steps) for name in ("train", "val")}
                probabilities["lightgbm"] = [
                    lightgbm_probabilities(data, i, features | fitting, args.threads) for i in range(len(data.horizons))
                ]
            seconds["lightgbm"].append(time.perf_counter() - started)
        train_obi, test_obi = (
            order_book_features(data.quotes, parts["train"].steps),
            order_book_features(data.quotes, parts["test"].steps),
        )
    results: dict = {"config": str(args.config), "threads": args.threads, "fit_seconds": seconds, "horizons": {}}
    test = parts["test"]
    for i, (horizon, horizon_s) in enumerate(zip(data.horizons, config.labels.horizons_s)):
        y = test.classes[:, i]
        logistic = logistic_baseline(
            train_obi, parts["train"].classes[:, i], test_obi, data.n_classes, config.evaluation.logistic_max_iter
        )
        losses = {
            name: -np.log(np.clip(p[i][np.arange(len(y)), y], 1e-12, 1.0)) for name, p in probabilities.items()
        } | {"logistic_obi": -np.log(np.clip(logistic[np.arange(len(y)), y], 1e-12, 1.0))}
        scores = {name: classification_metrics(y, p[i]) for name, p in probabilities.items()}
        results["horizons"][f"{horizon_s}s"] = {
            "log_loss": {name: float(loss.mean()) for name, loss in losses.items()},
            "accuracy": {name: s.accuracy for name, s in scores.items()},
            "lightgbm_minus_hist_gradient_boosting": asdict(
                mean_interval(losses["lightgbm"] - losses["hist_gradient_boosting"], horizon)
            ),
            "hist_gradient_boosting_minus_logistic_obi": asdict(
                mean_interval(losses["hist_gradient_boosting"] - losses["logistic_obi"], horizon)
            ),
        }
    results["fit_seconds_median"] = {name: median(values) for name, values in seconds.items()}
    results["lightgbm_over_hist_gradient_boosting_time"] = (
        results["fit_seconds_median"]["lightgbm"] / results["fit_seconds_median"]["hist_gradient_boosting"]
    )
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
