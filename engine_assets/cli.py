"""The ``engine`` command: daily training, instance setup and the tools around them."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engine_assets.settings import TRAINING_MODES, EngineSettings, SettingsError
from engine_assets.symbols import InvalidSymbolError, validate_symbol


def _symbols(text: str) -> tuple[str, ...]:
    try:
        return tuple(validate_symbol(part.strip().upper()) for part in text.split(",") if part.strip())
    except InvalidSymbolError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="Per-coin model training engine. Settings come from ENGINE_* variables (see README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run today's training for every coin (or a subset)")
    train.add_argument(
        "--symbols", type=_symbols, default=(), help="comma-separated coins to train, e.g. BTCUSDT,ETHUSDT (default: all)"
    )
    train.add_argument(
        "--mode", choices=TRAINING_MODES, help="sequential, parallel or hybrid (default: ENGINE_TRAINING_MODE or hybrid)"
    )
    train.add_argument("--concurrency", type=int, help="coins at a time in parallel mode (default: ENGINE_CONCURRENCY)")
    train.add_argument("--force", action="store_true", help="retrain coins that already succeeded today")

    commands.add_parser(
        "init-instance", help="write $DAGSTER_HOME/dagster.yaml with the mode's limits (run before `dagster dev`)"
    )

    storage = commands.add_parser("storage", help="artifact storage tools")
    storage_commands = storage.add_subparsers(dest="storage_command", required=True)
    storage_commands.add_parser("verify", help="check every manifest and champion pointer under the storage root")

    try:
        from engine_assets.data.download.cli import add_download_parser
    except ImportError:  # pragma: no cover - the download extra is part of the package
        add_download_parser = None
    if add_download_parser is not None:
        add_download_parser(commands)
    return parser


def _apply_overrides(args) -> EngineSettings:
    # Child processes (daemon, code server, run workers) read the same variables.
    if getattr(args, "mode", None):
        os.environ["ENGINE_TRAINING_MODE"] = args.mode
    if getattr(args, "concurrency", None):
        os.environ["ENGINE_CONCURRENCY"] = str(args.concurrency)
    settings = EngineSettings.from_env()
    os.environ.setdefault("ENGINE_HOME", str(settings.home))
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = _apply_overrides(args)
    except SettingsError as error:
        print(f"engine: {error}", file=sys.stderr)
        return 2

    if args.command == "train":
        from engine_assets.scheduling.daily import DailyOptions, run_daily

        try:
            return run_daily(settings, DailyOptions(symbols=args.symbols, force=args.force))
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            print(f"engine train: {error}", file=sys.stderr)
            return 2
    if args.command == "init-instance":
        from engine_assets.scheduling.instance import check_instance_config, write_instance_config
        from engine_assets.scheduling.modes import plan_concurrency

        plan = plan_concurrency(settings)
        path = write_instance_config(settings, plan.limit)
        check_instance_config(path, plan.limit)
        print(f"wrote {path}: {plan.mode} mode, {plan.limit} coin run(s) at a time ({plan.reason})")
        return 0
    if args.command == "storage" and args.storage_command == "verify":
        from engine_assets.storage.factory import build_store
        from engine_assets.storage.verify import verify_store

        from engine_assets.storage.base import StorageError

        try:
            report = verify_store(build_store(settings))
        except StorageError as error:
            print(f"engine storage verify: {error}", file=sys.stderr)
            return 2
        print(report.render())
        return 0 if report.ok else 1
    if args.command == "download-data":
        from engine_assets.data.download.cli import run_download

        return run_download(args, settings)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
