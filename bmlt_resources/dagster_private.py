"""Dagster's private names that bmlt relies on, in one place (dagster 1.13.27, pinned).

None has a public twin in 1.13. When Dagster is upgraded, this module is what to check; the tests
named below break first if a name moves.

- ``ConfigurableLegacyResourceAdapter``: the bridge from an old-style ``@resource``
  (dagster-mlflow's) to a typed, Pythonic one (``bmlt_resources.mlflow``; every MLflow asset test).
- ``process_config``: Dagster's own config validation, which checks ``deployment.k8s`` against
  dagster-k8s's executor schema when the code location loads (tests/test_deployment.py).
- ``AssetGraphSubset``, ``AssetKeyPartitionKey``, ``PartitionBackfill``, ``make_new_backfill_id``:
  what the UI's "Materialize" over a partition range stores, an asset backfill of exact
  partitions for the daemon to cut by backfill policy (``bmlt backfill``; tests/test_deployment.py).
- ``BulkActionStatus``: a stored backfill's status (benchmarks/backfill.py waits on it).
- ``DagsterHomeNotSetError``: raised by ``DagsterInstance.get()`` without ``$DAGSTER_HOME``;
  ``bmlt backfill`` turns it into one line.
"""

from dagster._config import process_config
from dagster._config.pythonic_config.resource import ConfigurableLegacyResourceAdapter
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.errors import DagsterHomeNotSetError
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

__all__ = [
    "AssetGraphSubset",
    "AssetKeyPartitionKey",
    "BulkActionStatus",
    "ConfigurableLegacyResourceAdapter",
    "DagsterHomeNotSetError",
    "PartitionBackfill",
    "make_new_backfill_id",
    "process_config",
]
