"""The day's resume ledger: ``runs/YYYYMMDDZ/status.json``.

One JSON document per UTC day records each coin's status (pending, running,
succeeded, skipped, failed, timed_out), attempts, times, artifact and error,
plus the encoder's. Several processes write it (the command line and every
coin run), so each update is a read-modify-write under an exclusive file lock
on the engine host; the write itself is atomic in the artifact store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from engine_assets.storage.base import ArtifactStore
from engine_assets.storage.manifest import read_json, write_json

COIN_STATUSES = ("pending", "running", "succeeded", "skipped", "failed", "timed_out")
FINISHED_STATUSES = ("succeeded", "skipped", "failed", "timed_out")
# Coins in these states are not trained again the same day unless forced.
DONE_STATUSES = ("succeeded", "skipped")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso_now() -> str:
    return utc_now().isoformat(timespec="seconds")


def day_key(moment: dt.datetime | None = None) -> str:
    """Return the ledger's day key, such as ``20261204Z``, for ``moment`` (default: now, UTC)."""
    moment = moment or utc_now()
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%dZ")


def ledger_key(day: str) -> str:
    return f"runs/{day}/status.json"


class Ledger:
    """Locked read-modify-write access to one day's ``status.json``."""

    def __init__(self, store: ArtifactStore, day: str, lock_dir: str | os.PathLike):
        self.store = store
        self.day = day
        self.key = ledger_key(day)
        self._lock_path = Path(lock_dir) / f"ledger-{day}.lock"

    def read(self) -> dict:
        """Return the ledger as stored, or an empty one for the day."""
        return read_json(self.store, self.key) or {"day": self.day, "coins": {}, "encoder": {}}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict]:
        """Yield the ledger for changes and store it when the block ends without error."""
        with self._locked():
            document = self.read()
            yield document
            document["updated_at"] = iso_now()
            write_json(self.store, self.key, document)

    def update_run(self, **fields) -> dict:
        """Merge ``fields`` into the run-level part of the ledger (mode, cutoff, limits)."""
        with self.edit() as document:
            document.update(fields)
            return dict(document)

    def update_coin(self, symbol: str, **fields) -> dict:
        """Merge ``fields`` into one coin's entry and return the entry."""
        if "status" in fields and fields["status"] not in COIN_STATUSES:
            raise ValueError(f"invalid ledger status {fields['status']!r} for {symbol}: expected one of {COIN_STATUSES}")
        with self.edit() as document:
            entry = document.setdefault("coins", {}).setdefault(symbol, {"status": "pending", "attempts": 0})
            entry.update(fields)
            return dict(entry)

    def begin_attempt(self, symbol: str, run_id: str, retry_number: int = 0) -> int:
        """Mark a coin running and return its attempt number for the day (1-based).

        Every step of a coin run calls this; the attempt count grows once per
        run and once per step retry, however many steps the run executes.
        """
        key = f"{run_id}:{retry_number}"
        with self.edit() as document:
            entry = document.setdefault("coins", {}).setdefault(symbol, {"status": "pending", "attempts": 0})
            keys = entry.setdefault("attempt_keys", [])
            if key not in keys:
                keys.append(key)
                entry["attempts"] = int(entry.get("attempts", 0)) + 1
                entry.setdefault("attempt_log", []).append(
                    {"attempt": entry["attempts"], "run_id": run_id, "retry_number": retry_number, "started_at": iso_now()}
                )
                entry.update(status="running", run_id=run_id, started_at=iso_now(), finished_at=None, error=None)
            return int(entry["attempts"])

    def note_attempt_end(self, symbol: str, outcome: str) -> None:
        """Record how the coin's latest attempt ended in its attempt log."""
        with self.edit() as document:
            entry = document.setdefault("coins", {}).setdefault(symbol, {"status": "pending", "attempts": 0})
            log = entry.setdefault("attempt_log", [])
            if log:
                log[-1].update(ended_at=iso_now(), outcome=outcome)

    def finish_coin(self, symbol: str, status: str, **fields) -> dict:
        fields.setdefault("finished_at", iso_now())
        return self.update_coin(symbol, status=status, **fields)

    def update_encoder(self, **fields) -> dict:
        with self.edit() as document:
            entry = document.setdefault("encoder", {})
            entry.update(fields)
            return dict(entry)

    def coins_to_train(self, symbols: list[str], force: bool = False) -> tuple[list[str], list[str]]:
        """Split ``symbols`` into (to train, already done today) by their ledger status."""
        if force:
            return list(symbols), []
        coins: Mapping[str, dict] = self.read().get("coins", {})
        done = [s for s in symbols if coins.get(s, {}).get("status") in DONE_STATUSES]
        return [s for s in symbols if s not in done], done
