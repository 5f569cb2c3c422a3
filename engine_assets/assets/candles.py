"""The ``candles`` asset: one coin's validated candles."""

import dagster as dg

from engine_assets.assets.checks import candle_quality_error, candle_quality_result, candle_quality_spec
from engine_assets.assets.common import begin_coin_step, failures_recorded, run_day
from engine_assets.partitions import coin_partitions
from engine_assets.resources import EngineResource


@dg.asset(
    partitions_def=coin_partitions,
    io_manager_key="frame_io_manager",
    group_name="data",
    kinds={"pandas"},
    owners=["team:quant-platform"],
    check_specs=[candle_quality_spec],
)
def candles(context: dg.AssetExecutionContext, engine: EngineResource):
    """One coin's candles read from ENGINE_DATA_DIR, checked, repaired where safe, and reported.

    A generator, so the candle_quality ERROR reaches the event log before the
    step fails. No return annotation: with check_specs, Dagster 1.13 would type
    the frame output as Nothing.
    """
    from engine_assets.data.loading import CandleFileError
    from engine_assets.data.validation import CandleDataError, load_symbol_candles
    from engine_assets.reporting.metadata import candles_metadata

    symbol = context.partition_key
    settings = engine.settings
    ledger = engine.ledger(run_day(context))
    begin_coin_step(context, ledger)
    with failures_recorded(ledger, symbol):
        try:
            frame, report = load_symbol_candles(settings.data_dir, symbol, settings.timeframe)
        except (CandleFileError, CandleDataError, FileNotFoundError) as error:
            yield candle_quality_error(error)
            # Bad data does not heal on a retry: fail the coin at once, with the file and the problem.
            raise dg.Failure(description=f"{symbol}: {error}", allow_retries=False) from error
        info = report.to_dict()
        context.log.info("%s: %s", symbol, report.summary())
        yield dg.MaterializeResult(
            value=frame,
            metadata={
                "rows": len(frame),
                "first_candle": str(frame["date"].iloc[0]),
                "last_candle": str(frame["date"].iloc[-1]),
                "gaps": info.get("gap_count", len(info.get("gaps", []))),
                "missing_candles": info.get("missing_candles", 0),
                "duplicates": info.get("duplicates_exact", 0) + info.get("duplicates_conflicting", 0),
                "severity": info.get("severity", "ok"),
                "findings": dg.MetadataValue.md("\n".join(f"- {line}" for line in report.findings) or "none"),
                "report": dg.MetadataValue.json(info),
                **candles_metadata(info),
            },
            check_results=[candle_quality_result(info)],
        )

