"""bmlt: Binance ML Training platform (Dagster assets and the computation they call).

Importing the package imports no framework: ``bmlt_assets.core`` must stay framework-free.
"""

import warnings

# backfill_policy and dagster-mlflow's hook are beta in dagster 1.13, partitioned asset checks
# preview; both are load-bearing and pinned (1.13.27), so the per-import warnings are noise.
# Matched by message, not by dagster's warning classes, so that importing core loads no dagster.
warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")
