"""bmlt: Binance ML Training platform (Dagster assets and the computation they call)."""

import warnings

import dagster as dg

# backfill_policy and dagster-mlflow's hook are marked beta; both are load-bearing here and
# pinned (dagster 1.13.27), so the per-import warnings are noise for users.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
# Partitioned asset checks are "preview" in 1.13; they are what keeps a check to its own day.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
# Our pyfunc's predict has no type hints on purpose (the logged signature is its schema).
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
