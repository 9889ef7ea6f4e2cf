"""record_job: the live recorder as a Dagster job, for users who launch everything from the UI.

The same recorder as ``bmlt record`` (``bmlt_assets.core.sources.binance.recorder``), for ``duration_s`` seconds.
Terminating the run from the UI interrupts it; the recorder flushes what it holds on the way out.
"""

import asyncio
from collections.abc import Callable

import dagster as dg

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.files import landing_base, landing_root
from bmlt_assets.core.sources.binance.recorder import LandingWriter, Recorder, RecorderStats
from bmlt_resources.binance import BinanceResource
from bmlt_resources.settings import SettingsResource


def build_recorder(
    config: PlatformConfig,
    binance: BinanceResource,
    report: Callable[[str], None] | None,
    status_every_s: float | None = None,
) -> Recorder:
    data, recording = config.data, config.recording
    writer = LandingWriter(landing_root(landing_base(config), data.market), data.depth, recording.rotate_s)
    return Recorder(
        binance.stream_exchange(),
        data.symbols,
        data.depth,
        writer,
        cadence_ms=config.recording_cadence_ms,
        flush_s=recording.flush_s,
        backoff_s=recording.backoff_s,
        max_backoff_s=recording.max_backoff_s,
        status_every_s=status_every_s or recording.status_every_s,
        report=report,
    )


def stats_metadata(stats: RecorderStats) -> dict[str, dg.MetadataValue]:
    summary = stats.as_dict()
    return {
        "books": dg.MetadataValue.json(summary["books"]),
        "seconds": dg.MetadataValue.float(summary["seconds"]),
        "gaps": dg.MetadataValue.json(summary["gaps"]),
        "reconnects": dg.MetadataValue.int(summary["reconnects"]),
        "files": dg.MetadataValue.int(summary["files"]),
        "bytes": dg.MetadataValue.int(summary["bytes"]),
    }


class RecordConfig(dg.Config):
    duration_s: float = 3600.0
    log_every_s: float = 60.0  # a status line in the run's event log this often


@dg.op(description="Record the config's symbols from Binance into the landing zone for duration_s seconds.")
def record_order_books(
    context: dg.OpExecutionContext, config: RecordConfig, settings: SettingsResource, binance: BinanceResource
) -> dg.Output:
    recorder = build_recorder(settings.get(), binance, context.log.info, status_every_s=config.log_every_s)
    stats = asyncio.run(recorder.run(duration_s=config.duration_s))
    return dg.Output(None, metadata=stats_metadata(stats))


@dg.job(description="The live Binance recorder: rotating landing files that ingest_job then reads.")
def record_job() -> None:
    record_order_books()
