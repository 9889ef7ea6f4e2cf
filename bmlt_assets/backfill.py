"""Asset backfills of a date range, as the UI's "Materialize" over a partition range makes them.

The backfill daemon (``dagster-daemon run``, or the one ``dagster dev`` starts) cuts the range into
runs by the assets' backfill policy (``deployment.backfill``) and respects their dependencies:
``forward_returns`` of day D waits for ``book_tensors`` of D + 1. ``dagster job backfill`` does
neither: it starts one run per day at once, whatever the policy.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import dagster as dg

from bmlt_resources.dagster_private import (
    AssetGraphSubset,
    AssetKeyPartitionKey,
    PartitionBackfill,  # what the UI's backfill mutation stores
    make_new_backfill_id,
)


def submit_asset_backfill(
    instance: dg.DagsterInstance,
    definitions: dg.Definitions,
    assets: Sequence[dg.AssetKey],
    dates: Sequence[dt.date],
    title: str | None = None,
) -> str:
    """Queue a backfill of exactly ``dates`` of each of ``assets`` for the daemon; its id.

    Exactly those days: the UI's range would also target ``forward_returns`` of the day before
    the first (it reads the first day's tensors), whose own tensors are not part of the range."""
    asset_graph = definitions.resolve_asset_graph()
    target = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, date.isoformat()) for key in assets for date in dates}, asset_graph
    )
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id,
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        asset_graph_subset=target,
        title=title,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


class WebserverError(RuntimeError):
    """The Dagster webserver refused the backfill or could not be reached; the message says which."""


def submit_through_webserver(
    url: str, assets: Sequence[dg.AssetKey], start: dt.date, end: dt.date, title: str | None = None
) -> str:
    """Queue the same backfill as :func:`submit_asset_backfill`, through the webserver's GraphQL
    API (dagster-graphql's client): from any machine that reaches it, with no instance config
    (``$DAGSTER_HOME``) there. Each asset gets exactly the days ``start..end``."""
    from urllib.parse import urlsplit

    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebserverError(f"--webserver {url!r} is not a URL such as http://dagster-webserver:80")
    client = DagsterGraphQLClient(
        parts.hostname, port_number=parts.port, use_https=parts.scheme == "https", path_prefix=parts.path.rstrip("/")
    )
    days = {"range": {"start": start.isoformat(), "end": end.isoformat()}}
    params = {
        "partitionsByAssets": [{"assetKey": {"path": key.path}, "partitions": days} for key in assets],
        "title": title,
    }
    try:
        answer = client._execute(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    except DagsterGraphQLClientError as error:
        raise WebserverError(f"the Dagster webserver at {url} did not answer ({error}); check the URL") from None
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise WebserverError(f"the Dagster webserver at {url} refused the backfill: {answer.get('message', answer)}")
    return answer["backfillId"]
