"""Check a whole artifact store: every manifest, every file it lists, every champion pointer.

``verify_store`` reads every byte under the root, so on a remote backend it
costs one download of the store. Unlike ``verify_folder``, which stops at the
first problem, it collects all problems into one report.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from engine_assets.storage.base import ArtifactNotFoundError, ArtifactStore, StorageError, normalize_key
from engine_assets.storage.manifest import MANIFEST_NAME, read_manifest, sha256_hex

logger = logging.getLogger(__name__)

POINTER_FOLDER = "champions"
ROSTER_NAME = "roster.json"
# Published folders of the storage layout: models/{SYMBOL}/{STAMP} and encoder/{STAMP}.
_LAYOUT_FOLDER = re.compile(r"^(models/[A-Z0-9]{2,20}|encoder)/\d{8}_\d{6}Z$")


@dataclass
class VerifyReport:
    """The result of ``verify_store``: what was checked and every problem found."""

    location: str
    folders_checked: list[str] = field(default_factory=list)
    pointers_checked: list[str] = field(default_factory=list)
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)
    #: Files listed in no manifest, inside a folder that has one; reported, not counted as problems.
    unlisted_files: list[str] = field(default_factory=list)
    #: Layout folders with files but no manifest, such as an upload cut short by a crash.
    incomplete_folders: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        """Return the report as plain text lines for a terminal."""
        lines = [
            f"store: {self.location}",
            f"checked {len(self.folders_checked)} folders, {self.files_checked} files, "
            f"{len(self.pointers_checked)} pointers",
        ]
        for folder in self.incomplete_folders:
            lines.append(f"incomplete (no {MANIFEST_NAME}, not loadable): {folder}")
        for key in self.unlisted_files:
            lines.append(f"not in manifest: {key}")
        lines.extend(f"PROBLEM: {problem}" for problem in self.problems)
        lines.append("OK" if self.ok else f"FAILED: {len(self.problems)} problems")
        return "\n".join(lines)


def verify_store(store: ArtifactStore) -> VerifyReport:
    """Verify every folder with a ``manifest.json`` and every pointer under ``champions/``.

    A folder fails when its manifest is invalid, a listed file is missing, or
    a file's size or SHA256 differs from the manifest. A pointer fails when
    the folder it names (``path``, or any field naming a ``models/`` or
    ``encoder/`` folder) has no manifest or does not verify, or when the
    manifest changed since the pointer was written (``manifest_sha256``).
    """
    report = VerifyReport(location=store.describe())
    logger.info("verifying artifact store %s", report.location)
    keys = store.list_keys("")

    manifest_suffix = "/" + MANIFEST_NAME
    manifest_folders = sorted(key[: -len(manifest_suffix)] for key in keys if key.endswith(manifest_suffix))
    folder_problems: dict[str, list[str]] = {}
    for folder in manifest_folders:
        problems = _verify_folder(store, folder, keys, report)
        folder_problems[folder] = problems
        report.folders_checked.append(folder)
        report.problems.extend(problems)

    for folder in sorted({_layout_folder(key) for key in keys} - {None} - set(manifest_folders)):
        report.incomplete_folders.append(folder)

    for key in keys:
        parts = key.split("/")
        is_pointer = len(parts) == 2 and parts[0] == POINTER_FOLDER and parts[1].endswith(".json")
        if is_pointer and parts[1] != ROSTER_NAME:
            report.pointers_checked.append(key)
            report.problems.extend(_verify_pointer(store, key, folder_problems))

    logger.info(
        "verified %s: %d folders, %d files, %d pointers, %d problems",
        report.location,
        len(report.folders_checked),
        report.files_checked,
        len(report.pointers_checked),
        len(report.problems),
    )
    return report


def _layout_folder(key: str) -> str | None:
    parts = key.split("/")
    depth = 3 if parts[0] == "models" else 2
    if len(parts) <= depth:
        return None
    folder = "/".join(parts[:depth])
    return folder if _LAYOUT_FOLDER.match(folder) else None


def _verify_folder(store: ArtifactStore, folder: str, keys: list[str], report: VerifyReport) -> list[str]:
    """Return the problems of one folder, checking every file its manifest lists."""
    try:
        manifest = read_manifest(store, folder)
    except StorageError as error:
        # IntegrityError (an invalid manifest) is a StorageError too.
        return [str(error)]

    problems = []
    listed = set()
    for name, entry in sorted(manifest["files"].items()):
        key = f"{folder}/{name}"
        listed.add(key)
        try:
            expected_sha256 = str(entry["sha256"])
            expected_size = int(entry["size"])
        except (KeyError, TypeError, ValueError):
            problems.append(
                f"invalid entry for {name!r} in {folder}/{MANIFEST_NAME}: expected size and sha256"
            )
            continue
        try:
            data = store.read_bytes(key)
        except ArtifactNotFoundError:
            problems.append(f"file missing: {key} is listed in {folder}/{MANIFEST_NAME} but not stored")
            continue
        except StorageError as error:
            problems.append(f"file unreadable: {key}: {error}")
            continue
        report.files_checked += 1
        actual = sha256_hex(data)
        if actual != expected_sha256 or len(data) != expected_size:
            problems.append(
                f"SHA256 mismatch for {key}: manifest has {expected_sha256} ({expected_size} bytes), "
                f"stored file has {actual} ({len(data)} bytes)"
            )

    manifest_key = f"{folder}/{MANIFEST_NAME}"
    for key in keys:
        if key.startswith(folder + "/") and key != manifest_key and key not in listed:
            report.unlisted_files.append(key)
    return problems


def _verify_pointer(store: ArtifactStore, key: str, folder_problems: dict[str, list[str]]) -> list[str]:
    """Return the problems of one champion pointer."""
    try:
        pointer = json.loads(store.read_bytes(key))
    except (ValueError, UnicodeDecodeError) as error:
        return [f"invalid pointer {key}: not JSON ({error})"]
    except StorageError as error:
        return [f"pointer unreadable: {key}: {error}"]
    if not isinstance(pointer, dict) or not isinstance(pointer.get("path"), str):
        return [f"invalid pointer {key}: expected a JSON object with a 'path' field naming a folder"]

    problems = []
    targets = {"path": pointer["path"]}
    for name, value in pointer.items():
        if name != "path" and isinstance(value, str) and _LAYOUT_FOLDER.match(value.strip("/")):
            targets[name] = value
    for name, target in targets.items():
        try:
            folder = normalize_key(target)
        except StorageError as error:
            problems.append(f"invalid pointer {key}: field {name!r}: {error}")
            continue
        if folder not in folder_problems:
            problems.append(
                f"pointer {key} names {folder} (field {name!r}), which has no {MANIFEST_NAME}; "
                "the folder is missing or incomplete"
            )
        elif folder_problems[folder]:
            problems.append(
                f"pointer {key} names {folder} (field {name!r}), which does not verify "
                f"({len(folder_problems[folder])} problems listed above)"
            )
        elif name == "path" and "manifest_sha256" in pointer:
            try:
                current = sha256_hex(store.read_bytes(f"{folder}/{MANIFEST_NAME}"))
            except StorageError as error:
                problems.append(f"pointer {key}: cannot read {folder}/{MANIFEST_NAME}: {error}")
                continue
            if current != pointer["manifest_sha256"]:
                problems.append(
                    f"pointer {key} records manifest SHA256 {pointer['manifest_sha256']} for {folder}, "
                    f"but its {MANIFEST_NAME} now has {current}; "
                    "the folder changed after the pointer was written"
                )
    return problems
