"""The Dagster UI in headless Chromium: retrain coins from the asset pages, then read their plots and tables.

One module-scoped ``dagster dev`` serves two real sample coins on 127.0.0.1
with one coin run at a time (sequential mode). The encoder is trained over
GraphQL; everything after that goes through the UI as a person would use it,
and the tests check the runs it launched, the ledger, the champions and what
the asset pages show. Screenshots go to ``test-artifacts/ui/``.

Needs Debian's Chromium at /usr/bin/chromium (``scripts/install_browser.sh``)
and the ``playwright`` package; it never downloads Playwright's own browsers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engine_assets_tests.conftest import CHECKOUT, link_samples

sync_api = pytest.importorskip("playwright.sync_api", reason="install the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Background networking, sync and component updates are off, so the browser talks only to the local server.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = CHECKOUT / "test-artifacts" / "ui"
BIN = Path(sys.executable).parent
BASES = ["BTC", "ETH"]
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
RETRAINED = "BTCUSDT"
VIEWPORT = {"width": 1920, "height": 1080}
START_TIMEOUT = 180
RUN_TIMEOUT = 240
UI_TIMEOUT_MS = 60_000

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results {
        runId
        jobName
        status
        tags { key value }
        stats { ... on RunStatsSnapshot { enqueuedTime launchTime startTime endTime } }
      }
    }
    ... on PythonError { message }
  }
}
"""

LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

LOCATION_QUERY = """
query {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterServer:
    """A ``dagster dev`` process on 127.0.0.1 and GraphQL access to it."""

    def __init__(self, root: Path, env: dict[str, str], port: int):
        self.root = root
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = root / "dagster-dev.log"
        self.process: subprocess.Popen | None = None

    @property
    def storage(self) -> Path:
        return Path(self.env["ENGINE_HOME"]) / "storage"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=CHECKOUT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                entries = self.graphql(LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
                (entry,) = entries
                if entry["loadStatus"] == "LOADED":
                    if entry["locationOrLoadError"]["__typename"] == "PythonError":
                        raise RuntimeError(f"engine_assets failed to load: {entry['locationOrLoadError']['message']}")
                    return
            time.sleep(1)
        raise RuntimeError(f"dagster dev did not load engine_assets within {START_TIMEOUT} s; see {self.log_path}")

    def stop(self) -> None:
        """Stop dagster dev and every process it started (webserver, daemon, code server, run workers)."""
        if self.process is None or self.process.poll() is not None:
            return
        # NOTE: dagster dev 1.13 can hang on shutdown after SIGINT or SIGTERM, so the
        # whole process group gets SIGKILL after a grace period.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise ValueError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def launch_job(self, job_name: str) -> str:
        params = {
            "selector": {
                "repositoryLocationName": "engine_assets",
                "repositoryName": "__repository__",
                "jobName": job_name,
            },
            "runConfigData": {},
            "executionMetadata": {"tags": []},
        }
        result = self.graphql(LAUNCH_MUTATION, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def runs(self, **run_filter) -> list[dict]:
        result = self.graphql(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        assert result["__typename"] == "Runs", result
        for run in result["results"]:
            run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
        return result["results"]

    def wait_for_runs(self, count: int, exclude: set[str] = frozenset(), **run_filter) -> list[dict]:
        """Wait until ``count`` runs match ``run_filter`` (less ``exclude`` ids) and all have ended.

        Fails when one of them did not succeed.
        """
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            runs = [run for run in self.runs(**run_filter) if run["runId"] not in exclude]
            ended = [run for run in runs if run["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            if len(runs) >= count and len(ended) == len(runs):
                failed = [run["runId"] for run in runs if run["status"] != "SUCCESS"]
                assert not failed, f"runs {failed} did not succeed; see {self.log_path}"
                return runs
            time.sleep(1)
        raise AssertionError(f"{count} runs matching {run_filter} did not end within {RUN_TIMEOUT} s; see {self.log_path}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_dir):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/install_browser.sh")
    root = tmp_path_factory.mktemp("ui")
    data_dir = link_samples(sample_dir, root / "data", BASES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TELEGRAM_", "DROPBOX_", "DAGSTER_"))}
    env.update(
        ENGINE_HOME=str(root / "home"),
        DAGSTER_HOME=str(root / "home" / "dagster"),
        ENGINE_DATA_DIR=str(data_dir),
        ENGINE_ENCODER_EPOCHS="1",
        ENGINE_COIN_RETRIES="0",
        # One coin run at a time, so the test can see the queue hold the second one.
        ENGINE_TRAINING_MODE="sequential",
    )
    init = subprocess.run(
        [str(BIN / "engine"), "init-instance"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert init.returncode == 0, init.stderr
    assert "1 coin run(s) at a time" in init.stdout
    dagster = DagsterServer(root, env, free_port())
    try:
        dagster.start()
        encoder_run = dagster.launch_job("encoder_job")
        dagster.wait_for_runs(1, runIds=[encoder_run])
        yield dagster
    finally:
        dagster.stop()


@pytest.fixture(scope="module")
def browser_page(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    def only_local(route):
        # Every request the page makes must go to the local server. Anything else is recorded and aborted.
        if urlsplit(route.request.url).netloc == f"127.0.0.1:{server.port}":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(UI_TIMEOUT_MS)
        context.route("**/*", only_local)
        page = context.new_page()
        try:
            yield page, outside
        finally:
            context.close()
            browser.close()


@pytest.fixture(scope="module")
def flow() -> dict:
    """What the earlier UI tests launched, for the later ones."""
    return {}


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def shot_graph(page, name: str) -> Path:
    """Save the asset graph's groups and nodes, cropped to them with a margin."""
    boxes = [box for box in (element.bounding_box() for element in page.locator("svg foreignObject").all()) if box]
    left = min(box["x"] for box in boxes) - 24
    top = min(box["y"] for box in boxes) - 24
    right = max(box["x"] + box["width"] for box in boxes) + 24
    bottom = max(box["y"] + box["height"] for box in boxes) + 24
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
    return path


def metadata_row(page, key: str):
    """Return the row of the asset page's metadata table whose key cell is ``key``."""
    return page.locator("tr", has=page.locator("td:first-child", has_text=re.compile(f"^{key}$")))


def pick_partitions(page, dialog, symbols: list[str]) -> None:
    dialog.get_by_text("Select a partition or create one").click()
    for symbol in symbols:
        page.get_by_text(symbol, exact=True).first.click()
    # Click the dialog's title to close the partition list.
    dialog.locator("text=/^Launch runs to materialize/").click()


def open_asset_graph(page, base: str) -> None:
    """Open the global asset graph with every group expanded."""
    page.goto(f"{base}/asset-groups")
    page.get_by_text("models", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    graph = page.locator("svg")
    if graph.get_by_text("coin_model", exact=True).count() == 0:
        # Alt+E is the graph's "Expand all groups" toggle, and the UI remembers its state.
        page.keyboard.press("Alt+e")
    for name in ("candles", "features", "shared_encoder", "coin_model", "roster", "summary"):
        graph.get_by_text(name, exact=True).first.wait_for()


def overlap(runs: list[dict]) -> int:
    intervals = [(run["stats"]["startTime"], run["stats"]["endTime"]) for run in runs]
    return max(sum(1 for start, end in intervals if start <= moment < end) for moment, _ in intervals)


def test_ui_asset_graph(server, browser_page):
    page, outside = browser_page
    open_asset_graph(page, server.base)
    for group in ("data", "models", "reports"):
        assert page.get_by_text(group, exact=True).count() >= 1
    page.wait_for_timeout(500)
    shot(page, "01-asset-graph")
    assert outside == []


def test_ui_coin_job_backfill_obeys_limit(server, browser_page, flow):
    page, outside = browser_page
    page.goto(server.base)
    page.get_by_role("link", name="Jobs").first.click()
    page.get_by_role("link", name="coin_job").first.click()
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.get_by_role("dialog")
    pick_partitions(page, dialog, SYMBOLS)
    page.wait_for_timeout(500)
    shot(page, "02-coin-job-launch")
    dialog.get_by_role("button", name=re.compile(r"^Launch (backfill|2 runs)$")).click()
    runs = server.wait_for_runs(2, pipelineName="coin_job")
    assert sorted(run["tags"]["dagster/partition"] for run in runs) == SYMBOLS
    for run in runs:
        assert run["tags"]["dagster/max_runtime"] == "2700"
        assert run["stats"]["enqueuedTime"] is not None
    # The instance allows one coin run at a time, and the UI's runs wait in the same queue.
    assert overlap(runs) == 1
    first, second = sorted(runs, key=lambda run: run["stats"]["startTime"])
    assert second["stats"]["startTime"] >= first["stats"]["endTime"]
    flow["coin_job_runs"] = runs
    assert outside == []


def test_ui_retrain_coin_model_partition(server, browser_page, flow):
    assert flow.get("coin_job_runs"), "needs the coins' candles and features from the coin_job test"
    page, outside = browser_page
    open_asset_graph(page, server.base)
    page.get_by_text("coin_model", exact=True).first.click()
    page.get_by_role("link", name="View in Asset Catalog").click()
    page.wait_for_url(re.compile(r"/assets/coin_model"))
    page.get_by_role("button", name="Materialize…").first.click()
    dialog = page.get_by_role("dialog")
    pick_partitions(page, dialog, [RETRAINED])
    dialog.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text(re.compile("Launched run")).first.wait_for()

    (run,) = server.wait_for_runs(1, pipelineName="__ASSET_JOB", tags=[{"key": "dagster/partition", "value": RETRAINED}])
    assert run["tags"]["dagster/from_ui"] == "true"
    # The partition tag is the key of the instance's coin concurrency limit.
    assert run["stats"]["enqueuedTime"] is not None
    flow["retrain_run"] = run

    day = next((server.storage / "runs").iterdir())
    entry = json.loads((day / "status.json").read_text())["coins"][RETRAINED]
    assert entry["status"] == "succeeded"
    assert entry["attempts"] == 2
    models = sorted(path.name for path in (server.storage / "models" / RETRAINED).iterdir())
    assert len(models) == 2
    pointer = json.loads((server.storage / "champions" / f"{RETRAINED}.json").read_text())
    assert pointer["path"] in {f"models/{RETRAINED}/{name}" for name in models}
    assert outside == []


def test_ui_coin_model_page_results(server, browser_page, flow):
    assert flow.get("retrain_run"), "needs the coin_model run from the retrain test"
    page, outside = browser_page
    page.goto(f"{server.base}/assets/coin_model")
    metrics = metadata_row(page, "metrics")
    metrics.wait_for()
    for text in ("model_net", "model_gross", "buy_and_hold_net", "head_only_net", "total return", "Sharpe"):
        assert metrics.get_by_text(text, exact=True).count() >= 1, text
    assert metadata_row(page, "top_features").get_by_text("emb_", exact=False).count() >= 1
    assert metadata_row(page, "champion_decision").count() == 1
    assert metadata_row(page, "manifest_sha256").count() == 1
    metrics.scroll_into_view_if_needed()
    shot(page, "03-coin-model-metrics")

    metadata_row(page, "equity_curve").get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator("img[src^='data:image/png;base64,']")
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [800, 400]
    # Let the dialog's fade-in end before the screenshot.
    page.wait_for_timeout(1000)
    shot(page, "04-coin-model-equity")
    page.get_by_role("dialog").get_by_role("button", name="Close").click()
    assert outside == []


def test_ui_checks_recorded(server, flow):
    assert flow.get("retrain_run"), "needs the coin_model run from the retrain test"
    from dagster import AssetCheckKey, AssetKey, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(server.env["DAGSTER_HOME"]))
    try:
        for asset, check in (("candles", "candle_quality"), ("coin_model", "champion_freshness"), ("coin_model", "manifest_integrity")):
            records = instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(AssetKey(asset), check), limit=20
            )
            evaluated = {record.partition for record in records if record.event is not None and record.status.value != "PLANNED"}
            assert set(SYMBOLS) <= evaluated, (check, evaluated)
            latest = next(record for record in records if record.partition == RETRAINED)
            assert latest.status.value == "SUCCEEDED", (check, latest.status)
    finally:
        instance.dispose()


def test_ui_publish_roster_and_summary(server, browser_page, flow):
    assert flow.get("retrain_run"), "needs the coin_model run from the retrain test"
    page, outside = browser_page
    page.goto(f"{server.base}/locations/engine_assets/jobs/publish_job")
    page.get_by_text(re.compile("^Materialize all")).first.click()
    page.get_by_text(re.compile("Launched run")).first.wait_for()
    (run,) = server.wait_for_runs(1, pipelineName="publish_job")
    assert run["tags"]["dagster/from_ui"] == "true"

    page.goto(f"{server.base}/assets/roster")
    roster = metadata_row(page, "roster")
    roster.wait_for()
    stored = json.loads((server.storage / "champions" / "roster.json").read_text())
    assert sorted(stored["coins"]) == SYMBOLS
    for symbol in SYMBOLS:
        assert roster.get_by_text(symbol, exact=True).count() == 1
        assert roster.get_by_text(stored["coins"][symbol]["champion"], exact=True).count() == 1
    assert metadata_row(page, "roster_today").count() == 1
    assert metadata_row(page, "roster_champion_holdout").count() == 1
    page.get_by_text("Latest materialization").first.wait_for()
    page.wait_for_timeout(1500)
    shot(page, "05-roster")

    page.goto(f"{server.base}/assets/summary")
    summary = metadata_row(page, "coins_table")
    summary.wait_for()
    for symbol in SYMBOLS:
        assert summary.get_by_text(symbol, exact=True).count() == 1
    assert metadata_row(page, "returns_by_coin").get_by_text("[Show Markdown]").count() == 1

    open_asset_graph(page, server.base)
    page.get_by_text("2 / 2 Passed").first.wait_for()
    page.wait_for_timeout(1000)
    shot_graph(page, "06-asset-graph-materialized")
    assert outside == []
