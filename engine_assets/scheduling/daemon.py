"""Starting and stopping the Dagster daemon that dequeues runs under the concurrency limits."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)



def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def daemon_running(instance, pid_file: Path) -> bool:
    """Return whether a live daemon serves ``instance``.

    Heartbeats stay fresh for about a minute after a daemon dies, so a
    heartbeat is trusted only when the daemon this engine started (its pid
    file) is still alive, or when no pid file exists (a daemon started by
    ``dagster dev``).
    """
    from dagster._daemon.controller import all_daemons_live

    pid = _read_pid(pid_file)
    if pid is not None and not _pid_alive(pid):
        # The file stays until a new daemon replaces it, so every check until then agrees.
        return False
    try:
        return all_daemons_live(instance)
    except Exception as error:  # a broken heartbeat table means no usable daemon
        logger.warning("cannot read daemon heartbeats: %s", error)
        return False


WORKSPACE_YAML = """load_from:
  - python_module:
      module_name: engine_assets.definitions
      location_name: engine_assets
"""


def _daemon_command(home: Path) -> list[str]:
    # The daemon must know the location by the same name the launcher gives runs,
    # which the command line's --module-name cannot set, so it gets a workspace file.
    workspace = home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    script = Path(sys.executable).with_name("dagster-daemon")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "dagster._daemon"]
    return prefix + ["run", "--workspace", str(workspace)]


class DaemonHandle:
    """The daemon serving this command: ``check()`` raises once a daemon this command started has exited."""

    def __init__(self, process: subprocess.Popen | None, log_path: Path):
        self.process = process
        self.log_path = log_path

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"the Dagster daemon exited with status {self.process.returncode}; see {self.log_path}"
            )


@contextlib.contextmanager
def running_daemon(instance, home: Path, log_path: Path) -> Iterator[DaemonHandle]:
    """Ensure a daemon runs for the block; stop it afterwards if this call started it.

    The block starts at once: queued runs wait in the queue until the daemon
    is up, so loading the code location and creating runs overlap its start.
    """
    pid_file = home / "daemon.pid"
    if daemon_running(instance, pid_file):
        logger.info("using the Dagster daemon already running for %s", home)
        yield DaemonHandle(None, log_path)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_stream:
        process = subprocess.Popen(
            _daemon_command(home),
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            start_new_session=True,
        )
    pid_file.write_text(str(process.pid))
    try:
        yield DaemonHandle(process, log_path)
    finally:
        stop_process_group(process)
        pid_file.unlink(missing_ok=True)


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started in its own session, with SIGTERM first and SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
