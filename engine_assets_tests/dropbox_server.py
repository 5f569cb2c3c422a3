"""A local fake of the Dropbox API v2 over HTTPS, for tests of the Dropbox artifact store.

The server listens on 127.0.0.1 on a free port with a certificate signed by a
throwaway CA generated at start (``ca_path`` is the PEM to trust). It speaks
Dropbox's wire formats for the routes the store uses:

- RPC routes (JSON body in and out): ``files/get_metadata``,
  ``files/list_folder``, ``files/list_folder/continue``, ``files/delete_v2``;
- upload routes (``Dropbox-API-Arg`` header, binary body, JSON result):
  ``files/upload``, ``files/upload_session/start``, ``append_v2``, ``finish``;
- the download route ``files/download`` (``Dropbox-API-Arg`` in,
  ``Dropbox-API-Result`` header out, binary body);
- ``oauth2/token`` with ``grant_type=refresh_token``.

Route errors are 409 responses with ``error_summary`` and a tagged ``error``;
authentication errors are 401, rate limits 429 with ``Retry-After``.

The server is stricter than Dropbox in one place: it requires every chunk of
an upload session except the last one to be a multiple of 4 MiB, a rule
Dropbox enforces only for concurrent sessions. Tests can also queue 429
responses, expire access tokens and make the server report a wrong
``content_hash`` for a path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import itertools
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BLOCK_SIZE = 4 * 1024 * 1024
MAX_PAYLOAD = 150 * 1024 * 1024
TOKEN_LIFETIME_SECONDS = 14400


def content_hash(data: bytes) -> str:
    """Return Dropbox's content hash: SHA256 over the concatenated SHA256 digests of each 4 MiB block."""
    blocks = (data[start : start + BLOCK_SIZE] for start in range(0, len(data), BLOCK_SIZE))
    digests = b"".join(hashlib.sha256(block).digest() for block in blocks)
    return hashlib.sha256(digests).hexdigest()


class RouteError(Exception):
    """A Dropbox route error: HTTP 409 with a tagged error value."""

    def __init__(self, error: dict, status: int = 409):
        super().__init__(error)
        self.error = error
        self.status = status


class BadRequest(Exception):
    """A malformed call, which Dropbox rejects with HTTP 400 and a plain-text reason."""


@dataclasses.dataclass
class StoredFile:
    path_display: str
    data: bytes
    content_hash: str
    rev: str
    file_id: str
    server_modified: str


@dataclasses.dataclass
class UploadSession:
    data: bytearray
    closed: bool = False
    #: (route, size in bytes, close flag) of every call that carried data.
    chunks: list[tuple[str, int, bool]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    route: str
    status: int
    #: time.monotonic() when the request arrived.
    received_at: float


def _summary(error: dict) -> str:
    tags = []
    value: Any = error
    while isinstance(value, dict) and ".tag" in value:
        tags.append(value[".tag"])
        value = value.get(value[".tag"])
    return "/".join(tags) + "/.."


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write a CA certificate and a server certificate for 127.0.0.1 and localhost; return their paths.

    Returns ``(ca_path, cert_path, key_path)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engine tests fake Dropbox CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = directory / "fake-dropbox-ca.pem"
    cert_path = directory / "fake-dropbox-server.pem"
    key_path = directory / "fake-dropbox-server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class FakeDropboxServer:
    """Dropbox API v2 for one account, in memory; use as a context manager or call start() and stop()."""

    def __init__(
        self,
        directory: Path,
        *,
        app_key: str = "fake-app-key",
        app_secret: str = "fake-app-secret",
        refresh_token: str = "fake-refresh-token",
        page_size: int = 3,
    ):
        self.app_key = app_key
        self.app_secret = app_secret
        self.refresh_token = refresh_token
        self.page_size = page_size
        self.ca_path, self._cert_path, self._key_path = generate_certificates(directory)

        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.files: dict[str, StoredFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.access_tokens: dict[str, bool] = {}  # token -> expired
        self.refresh_count = 0
        self.requests: list[RequestRecord] = []
        self._cursors: dict[str, tuple[list[dict], int]] = {}
        self._rate_limits: list[int] = []  # Retry-After seconds of queued 429 responses
        self._corrupt_paths: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def start(self) -> "FakeDropboxServer":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_path, self._key_path)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-dropbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def __enter__(self) -> "FakeDropboxServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the value for the store's ``api_host`` and ``content_host``."""
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    # Controls for tests.

    def issue_access_token(self) -> str:
        """Return a new valid access token, as the OAuth flow would."""
        token = f"fake-access-{secrets.token_hex(8)}"
        with self._lock:
            self.access_tokens[token] = False
        return token

    def expire_access_tokens(self) -> None:
        """Mark every access token issued so far as expired, so calls with it get 401 expired_access_token."""
        with self._lock:
            for token in self.access_tokens:
                self.access_tokens[token] = True

    def queue_rate_limits(self, count: int, retry_after: int = 1) -> None:
        """Reject the next ``count`` API calls with 429 and ``Retry-After: retry_after``."""
        with self._lock:
            self._rate_limits.extend([retry_after] * count)

    def corrupt_content_hash(self, path: str) -> None:
        """Report a wrong ``content_hash`` for files committed at ``path`` from now on."""
        with self._lock:
            self._corrupt_paths.add(path.lower())

    def routes(self) -> list[str]:
        with self._lock:
            return [record.route for record in self.requests]

    # Helpers used by the handler, called with the lock held.

    def _record(self, route: str, status: int, received_at: float) -> None:
        self.requests.append(RequestRecord(route, status, received_at))

    def _file_metadata(self, stored: StoredFile, tagged: bool) -> dict:
        metadata = {
            "name": stored.path_display.rsplit("/", 1)[-1],
            "id": stored.file_id,
            "client_modified": stored.server_modified,
            "server_modified": stored.server_modified,
            "rev": stored.rev,
            "size": len(stored.data),
            "path_lower": stored.path_display.lower(),
            "path_display": stored.path_display,
            "is_downloadable": True,
            "content_hash": stored.content_hash,
        }
        return {".tag": "file", **metadata} if tagged else metadata

    @staticmethod
    def _folder_metadata(path_display: str) -> dict:
        return {
            ".tag": "folder",
            "name": path_display.rsplit("/", 1)[-1],
            "id": "id:folder" + hashlib.sha256(path_display.lower().encode()).hexdigest()[:16],
            "path_lower": path_display.lower(),
            "path_display": path_display,
        }

    def _files_under(self, folder_lower: str) -> list[StoredFile]:
        start = folder_lower + "/"
        return [stored for lower, stored in self.files.items() if lower.startswith(start)]

    def _commit(self, path: str, data: bytes, mode) -> dict:
        """Store ``data`` at ``path`` and return its metadata, or raise the WriteError of a conflict."""
        if not path.startswith("/") or path.endswith("/") or "//" in path:
            raise RouteError({".tag": "path", "path": {".tag": "malformed_path"}})
        lower = path.lower()
        mode_tag = mode.get(".tag") if isinstance(mode, dict) else mode
        if self._files_under(lower):
            raise RouteError({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": "folder"}}})
        parent = lower.rsplit("/", 1)[0]
        while parent:
            if parent in self.files:
                raise RouteError({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": "file"}}})
            parent = parent.rsplit("/", 1)[0]
        if mode_tag == "add" and lower in self.files:
            raise RouteError({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": "file"}}})
        if mode_tag not in ("add", "overwrite"):
            raise BadRequest(f"write mode {mode_tag!r} is not supported by this fake server")

        hash_value = content_hash(data)
        if lower in self._corrupt_paths:
            hash_value = content_hash(data + b"corrupted by the fake server")
        number = next(self._counter)
        previous = self.files.get(lower)
        stored = StoredFile(
            path_display=path,
            data=bytes(data),
            content_hash=hash_value,
            rev=f"{number:015x}",
            file_id=previous.file_id if previous else f"id:file{number:012d}",
            server_modified=_timestamp(),
        )
        self.files[lower] = stored
        return self._file_metadata(stored, tagged=False)

    @staticmethod
    def _check_hash(argument: dict, data: bytes) -> None:
        expected = argument.get("content_hash")
        if expected is not None and expected != content_hash(data):
            raise RouteError({".tag": "content_hash_mismatch"})

    def _lookup(self, path: str) -> tuple[str, Any]:
        """Return ("file", StoredFile) or ("folder", display path), or raise path/not_found."""
        lower = path.lower()
        if lower in self.files:
            return "file", self.files[lower]
        under = self._files_under(lower)
        if under:
            display = under[0].path_display[: len(path)]
            return "folder", display
        raise RouteError({".tag": "path", "path": {".tag": "not_found"}})

    # Routes: each takes the decoded argument and the request body.

    def route_upload(self, argument: dict, body: bytes):
        self._check_hash(argument, body)
        return self._commit(argument["path"], body, argument.get("mode", "add"))

    def route_upload_session_start(self, argument: dict, body: bytes):
        self._check_hash(argument, body)
        if body and not argument.get("close", False) and len(body) % BLOCK_SIZE:
            raise BadRequest(
                f"chunk of {len(body)} bytes is not a multiple of {BLOCK_SIZE} bytes "
                "and does not close the session"
            )
        session_id = secrets.token_hex(16)
        session = UploadSession(data=bytearray(body), closed=bool(argument.get("close", False)))
        if body:
            session.chunks.append(("start", len(body), session.closed))
        self.sessions[session_id] = session
        return {"session_id": session_id}

    def _session_for(self, cursor: dict) -> UploadSession:
        session = self.sessions.get(cursor["session_id"])
        if session is None:
            raise RouteError({".tag": "not_found"})
        if session.closed:
            raise RouteError({".tag": "closed"})
        if cursor["offset"] != len(session.data):
            raise RouteError({".tag": "incorrect_offset", "correct_offset": len(session.data)})
        return session

    def route_upload_session_append_v2(self, argument: dict, body: bytes):
        session = self._session_for(argument["cursor"])
        self._check_hash(argument, body)
        close = bool(argument.get("close", False))
        if not close and len(body) % BLOCK_SIZE:
            raise RouteError({".tag": "concurrent_session_invalid_data_size"})
        session.data.extend(body)
        session.closed = close
        session.chunks.append(("append_v2", len(body), close))
        return None

    def route_upload_session_finish(self, argument: dict, body: bytes):
        try:
            session = self._session_for(argument["cursor"])
        except RouteError as error:
            raise RouteError({".tag": "lookup_failed", "lookup_failed": error.error}) from None
        self._check_hash(argument, body)
        session.data.extend(body)
        session.chunks.append(("finish", len(body), True))
        commit = argument["commit"]
        metadata = self._commit(commit["path"], bytes(session.data), commit.get("mode", "add"))
        session.closed = True
        return metadata

    def route_download(self, argument: dict, body: bytes):
        kind, value = self._lookup(argument["path"])
        if kind != "file":
            raise RouteError({".tag": "path", "path": {".tag": "not_file"}})
        return self._file_metadata(value, tagged=False), value.data

    def route_get_metadata(self, argument: dict, body: bytes):
        kind, value = self._lookup(argument["path"])
        return self._file_metadata(value, tagged=True) if kind == "file" else self._folder_metadata(value)

    def route_list_folder(self, argument: dict, body: bytes):
        path = argument["path"]
        if path:
            kind, _ = self._lookup(path)
            if kind == "file":
                raise RouteError({".tag": "path", "path": {".tag": "not_folder"}})
        folder_lower = path.lower()
        recursive = bool(argument.get("recursive", False))
        entries: dict[str, dict] = {}
        for stored in self._files_under(folder_lower):
            relative = stored.path_display[len(path) + 1 :].split("/")
            if not recursive and len(relative) > 1:
                child = stored.path_display[: len(path) + 1 + len(relative[0])]
                entries[child.lower()] = self._folder_metadata(child)
                continue
            # Every folder between the listed one and the file appears once, as Dropbox lists it.
            for depth in range(1, len(relative)):
                child = stored.path_display[: len(path) + 1 + len("/".join(relative[:depth]))]
                entries[child.lower()] = self._folder_metadata(child)
            entries[stored.path_display.lower()] = self._file_metadata(stored, tagged=True)
        ordered = [entries[key] for key in sorted(entries)]
        limit = min(int(argument.get("limit") or self.page_size), self.page_size)
        cursor = secrets.token_hex(12)
        self._cursors[cursor] = (ordered, limit)
        return self._page(cursor, 0)

    def _page(self, cursor: str, position: int) -> dict:
        ordered, limit = self._cursors[cursor]
        page = ordered[position : position + limit]
        next_position = position + len(page)
        next_cursor = f"{cursor}:{next_position}"
        self._cursors[next_cursor] = (ordered, limit)
        return {"entries": page, "cursor": next_cursor, "has_more": next_position < len(ordered)}

    def route_list_folder_continue(self, argument: dict, body: bytes):
        cursor = argument["cursor"]
        if cursor not in self._cursors or ":" not in cursor:
            raise RouteError({".tag": "reset"})
        base, position = cursor.rsplit(":", 1)
        return self._page(base, int(position))

    def route_delete_v2(self, argument: dict, body: bytes):
        try:
            kind, value = self._lookup(argument["path"])
        except RouteError:
            raise RouteError({".tag": "path_lookup", "path_lookup": {".tag": "not_found"}}) from None
        if kind == "file":
            del self.files[value.path_display.lower()]
            return {"metadata": self._file_metadata(value, tagged=True)}
        for stored in self._files_under(argument["path"].lower()):
            del self.files[stored.path_display.lower()]
        return {"metadata": self._folder_metadata(value)}

    def token(self, form: dict[str, str]) -> tuple[int, dict]:
        """Handle ``oauth2/token``: return a new access token for a valid refresh token."""
        if form.get("grant_type") != "refresh_token":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "only refresh_token is supported",
            }
        client_secret = form.get("client_secret", self.app_secret)
        if form.get("client_id") != self.app_key or client_secret != self.app_secret:
            return 400, {"error": "invalid_client", "error_description": "invalid client_id or client_secret"}
        if form.get("refresh_token") != self.refresh_token:
            return 400, {"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}
        self.refresh_count += 1
        access_token = f"fake-access-{secrets.token_hex(8)}"
        self.access_tokens[access_token] = False
        return 200, {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": TOKEN_LIFETIME_SECONDS,
        }


# Route name -> (style, handler name). Styles follow the SDK: rpc, upload, download.
ROUTES = {
    "files/upload": ("upload", "route_upload"),
    "files/upload_session/start": ("upload", "route_upload_session_start"),
    "files/upload_session/append_v2": ("upload", "route_upload_session_append_v2"),
    "files/upload_session/finish": ("upload", "route_upload_session_finish"),
    "files/download": ("download", "route_download"),
    "files/get_metadata": ("rpc", "route_get_metadata"),
    "files/list_folder": ("rpc", "route_list_folder"),
    "files/list_folder/continue": ("rpc", "route_list_folder_continue"),
    "files/delete_v2": ("rpc", "route_delete_v2"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes, so without TCP_NODELAY each response
    # waits for the client's delayed ACK.
    disable_nagle_algorithm = True
    fake: FakeDropboxServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the name is fixed by the base class
        pass

    def _send(self, response: "FakeResponse") -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Dropbox-Request-Id", secrets.token_hex(8))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def do_POST(self) -> None:  # noqa: N802 - the name is fixed by the base class
        received_at = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        fake = self.fake

        if path == "/oauth2/token":
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8")))
            with fake._lock:
                status, payload = fake.token(form)
                fake._record("oauth2/token", status, received_at)
            self._send(FakeResponse.json(status, payload))
            return

        route = path.removeprefix("/2/")
        if route not in ROUTES or not path.startswith("/2/"):
            self._send(FakeResponse.text(404, "Unknown API function"))
            return
        style, handler_name = ROUTES[route]

        with fake._lock:
            response = self._dispatch(route, style, handler_name, body)
            fake._record(route, response.status, received_at)
        self._send(response)

    def _dispatch(self, route: str, style: str, handler_name: str, body: bytes) -> "FakeResponse":
        """Run one API call; the caller holds the server's lock."""
        fake = self.fake
        authorization = self.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        if token is None:
            message = f'Error in call to API function "{route}": Must provide HTTP header "Authorization".'
            return FakeResponse.text(400, message)
        if token not in fake.access_tokens or fake.access_tokens[token]:
            tag = "expired_access_token" if fake.access_tokens.get(token) else "invalid_access_token"
            return FakeResponse.json(401, {"error_summary": f"{tag}/..", "error": {".tag": tag}})
        if fake._rate_limits:
            retry_after = fake._rate_limits.pop(0)
            payload = {
                "error_summary": "too_many_requests/..",
                "error": {"reason": {".tag": "too_many_requests"}, "retry_after": retry_after},
            }
            return FakeResponse.json(429, payload, {"Retry-After": str(retry_after)})

        try:
            if style == "rpc":
                argument = json.loads(body or b"null")
                data = b""
            else:
                argument = json.loads(self.headers.get("Dropbox-API-Arg", "null"))
                data = body
            if not isinstance(argument, dict):
                raise BadRequest("the argument must be a JSON object")
            if len(data) > MAX_PAYLOAD:
                raise RouteError({".tag": "payload_too_large"})
            result = getattr(fake, handler_name)(argument, data)
        except RouteError as error:
            return FakeResponse.json(error.status, {"error_summary": _summary(error.error), "error": error.error})
        except (BadRequest, ValueError, KeyError, TypeError) as error:
            return FakeResponse.text(400, f'Error in call to API function "{route}": {error}')

        if style == "download":
            metadata, content = result
            headers = {"Dropbox-API-Result": json.dumps(metadata)}
            return FakeResponse(200, "application/octet-stream", content, headers)
        return FakeResponse.json(200, result)


@dataclasses.dataclass(frozen=True)
class FakeResponse:
    """One HTTP response of the fake server."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload, headers: dict[str, str] | None = None) -> "FakeResponse":
        # The SDK requires exactly "application/json", without a charset parameter.
        return cls(status, "application/json", json.dumps(payload).encode("utf-8"), headers or {})

    @classmethod
    def text(cls, status: int, message: str) -> "FakeResponse":
        return cls(status, "text/plain; charset=utf-8", message.encode("utf-8"))
