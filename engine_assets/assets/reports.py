"""The ``roster`` and ``summary`` assets: every coin's champion, and the day's report."""

import dagster as dg

from engine_assets.assets.coin_model import coin_model
from engine_assets.assets.common import run_day
from engine_assets.partitions import universe_symbols
from engine_assets.resources import EngineResource


@dg.asset(
    deps=[coin_model],
    io_manager_key="json_io_manager",
    group_name="reports",
    kinds={"json"},
    owners=["team:quant-platform"],
)
def roster(context: dg.AssetExecutionContext, engine: EngineResource) -> dg.MaterializeResult:
    """Every coin's champion, its key metrics and today's status, also for coins that failed."""
    from engine_assets.reporting.metadata import roster_metadata
    from engine_assets.training.reports import build_roster, publish_roster

    store = engine.store()
    document = engine.ledger(run_day(context)).read()
    roster_document = build_roster(store, document, universe_symbols(engine.settings))
    key = publish_roster(store, roster_document)
    champions = sum(1 for coin in roster_document["coins"].values() if coin["champion"])
    return dg.MaterializeResult(
        value=roster_document,
        metadata={
            "coins": len(roster_document["coins"]),
            "champions": champions,
            "path": key,
            **roster_metadata(roster_document),
        },
    )


@dg.asset(io_manager_key="json_io_manager", group_name="reports", kinds={"json"}, owners=["team:quant-platform"])
def summary(context: dg.AssetExecutionContext, engine: EngineResource, roster: dict) -> dg.MaterializeResult:
    """The day's report: counts by status, and each coin's result beside buy-and-hold."""
    from engine_assets.reporting.metadata import summary_metadata
    from engine_assets.training.reports import build_summary, publish_summary

    store = engine.store()
    document = engine.ledger(run_day(context)).read()
    summary_document = build_summary(document, roster)
    key = publish_summary(store, summary_document)
    return dg.MaterializeResult(
        value=summary_document,
        metadata={
            **{f"count_{k}": v for k, v in summary_document["counts"].items()},
            "path": key,
            **summary_metadata(summary_document),
        },
    )
