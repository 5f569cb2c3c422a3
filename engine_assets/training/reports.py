"""The roster of champions and the day's summary, built from the ledger and the pointers."""

from __future__ import annotations

import datetime as dt

from engine_assets.scheduling.ledger import COIN_STATUSES
from engine_assets.storage.base import ArtifactStore
from engine_assets.storage.manifest import read_json, write_json
from engine_assets.training.champions import read_champion


def build_roster(store: ArtifactStore, ledger_document: dict, symbols: list[str]) -> dict:
    """Return every coin's champion, key metrics and today's status."""
    coins = {}
    entries = ledger_document.get("coins", {})
    for symbol in sorted(set(symbols) | set(entries)):
        entry = entries.get(symbol, {})
        pointer = read_champion(store, symbol)
        coins[symbol] = {
            "status": entry.get("status", "pending"),
            "reason": entry.get("reason") or entry.get("error"),
            "champion": pointer.get("path") if pointer else None,
            "champion_head": pointer.get("head") if pointer else None,
            "champion_since": pointer.get("promoted_at") if pointer else None,
            "encoder": pointer.get("encoder_path") if pointer else None,
            "champion_holdout_net": pointer.get("holdout_net") if pointer else None,
            "champion_changed": bool(entry.get("champion_changed")),
            "today": entry.get("metrics"),
        }
    return {
        "day": ledger_document.get("day"),
        "cutoff": ledger_document.get("cutoff"),
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "coins": coins,
    }


def build_summary(ledger_document: dict, roster: dict) -> dict:
    """Return the day's report: counts by status and one row per coin."""
    counts = {status: 0 for status in COIN_STATUSES if status not in ("pending", "running")}
    rows = []
    for symbol, coin in roster["coins"].items():
        status = coin["status"]
        if status in counts:
            counts[status] += 1
        else:
            counts[status] = counts.get(status, 0) + 1
        entry = ledger_document.get("coins", {}).get(symbol, {})
        today = coin.get("today") or {}
        rows.append(
            {
                "symbol": symbol,
                "status": status,
                "reason": coin.get("reason"),
                "head": today.get("head"),
                "sharpe_net": today.get("sharpe_net"),
                "total_return_net": today.get("total_return_net"),
                "buy_and_hold_return": today.get("buy_and_hold_return"),
                "buy_and_hold_sharpe": today.get("buy_and_hold_sharpe"),
                "champion_changed": coin.get("champion_changed", False),
                "champion": coin.get("champion"),
                "attempts": entry.get("attempts", 0),
            }
        )
    started = ledger_document.get("started_at")
    finished = dt.datetime.now(dt.timezone.utc)
    duration = None
    if started:
        duration = round((finished - dt.datetime.fromisoformat(started)).total_seconds(), 1)
    return {
        "date": ledger_document.get("day"),
        "started_at": started,
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_seconds": duration,
        "mode": ledger_document.get("mode"),
        "concurrency": ledger_document.get("concurrency"),
        "device": ledger_document.get("device"),
        "cutoff": ledger_document.get("cutoff"),
        "encoder": ledger_document.get("encoder", {}).get("path"),
        "counts": counts,
        "coins": rows,
    }


def publish_roster(store: ArtifactStore, roster: dict) -> str:
    key = "champions/roster.json"
    write_json(store, key, roster)
    return key


def publish_summary(store: ArtifactStore, summary: dict) -> str:
    key = f"summary/{summary['date']}/engine_summary.json"
    write_json(store, key, summary)
    return key


def read_summary(store: ArtifactStore, day: str) -> dict | None:
    return read_json(store, f"summary/{day}/engine_summary.json")
