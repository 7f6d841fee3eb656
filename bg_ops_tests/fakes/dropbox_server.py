"""A loopback HTTPS server speaking the part of the Dropbox API v2 that bg_ops uses.

It is driven by the real ``dropbox`` SDK (pointed here through ``DROPBOX_API_HOST`` and
friends, see ``dropbox_fixtures``), so what the SDK sends and how it decodes the answers is
exercised for real. The server enforces the rules of the real service that bg_ops depends
on, and nothing more:

- OAuth: ``/oauth2/token`` with the ``refresh_token`` grant; every route checks the bearer
  token (401 ``invalid_access_token`` / ``expired_access_token``);
- paths: must start with ``/``, no trailing slash, no empty/``.``/``..`` components
  (409 ``malformed_path``); compared case-insensitively, a file or folder keeps the case it
  was first written with; missing parent folders are created, a file in the way of a parent
  is a ``conflict/file_ancestor``;
- ``WriteMode`` ``add``/``overwrite`` with ``autorename`` (``name (2).ext``) and
  ``strict_conflict`` (when false, identical content is not a conflict);
- upload sessions with offset checking (``incorrect_offset`` carries ``correct_offset``),
  a per-request payload limit (150 MiB, ``max_upload_size``), per-call ``content_hash``
  verification, and ``content_hash`` on every file's metadata;
- ``list_folder`` pages (``page_size``) through ``list_folder/continue``; a recursive
  listing of a folder includes the folder itself, as Dropbox's does;
- JSON answers carry ``Content-Type: application/json`` exactly; route errors are 409 with
  Dropbox's ``{"error_summary": ..., "error": {...}}`` shapes.

Test controls: ``fail_next`` (429 with ``Retry-After``, 500, 503 ... on cue), ``expire_tokens``,
``corrupt_next_upload``, ``put_file``/``make_folder`` to seed state, and the ``files``,
``folders``, ``sessions`` and ``requests`` attributes to inspect it. ``reset()`` restores a
clean server. The server never sleeps.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import posixpath
import secrets
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit
from bg_ops_tests.support.tls import make_self_signed_cert

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_SIZE = 150 * MiB
_BLOCK = 4 * MiB

# Names Dropbox refuses to store (WriteError.disallowed_name).
_DISALLOWED_NAMES = {"desktop.ini", "thumbs.db", ".ds_store", "icon\r", ".dropbox", ".dropbox.attr"}


def dropbox_content_hash(data: bytes) -> str:
    """Dropbox's content hash, written independently of ``bg_ops.util.content_hash``."""
    digests = b"".join(
        hashlib.sha256(data[i : i + _BLOCK]).digest() for i in range(0, len(data), _BLOCK)
    )
    return hashlib.sha256(digests).hexdigest()




# -- state ------------------------------------------------------------------------------------
@dataclass
class FakeFile:
    display: str  # path_display
    data: bytes
    content_hash: str
    rev: str
    id: str
    server_modified: dt.datetime
    client_modified: dt.datetime

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class FakeFolder:
    display: str
    id: str


@dataclass
class FakeSession:
    id: str
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False


class RequestRecord(NamedTuple):
    endpoint: str  # "files/upload", "files/upload_session/append_v2", "oauth2/token" ...
    arg: Any  # the decoded route argument (form fields for oauth2/token)
    size: int  # bytes in the request body
    status: int  # HTTP status answered
    token: str | None  # bearer token presented, if any


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: float | None
    endpoint: str | None
    after_processing: bool


class _Answer:
    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> _Answer:
        return cls(
            status,
            json.dumps(obj).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    @classmethod
    def text(cls, status: int, message: str) -> _Answer:
        return cls(status, message.encode(), {"Content-Type": "text/plain; charset=utf-8"})


class _RouteError(Exception):
    """A 409 route error: ``error`` is the JSON of the route's error union."""

    def __init__(self, error: Any):
        super().__init__(error)
        self.error = error

    def summary(self) -> str:
        tags = []
        node = self.error
        while isinstance(node, dict) and ".tag" in node:
            tag = node[".tag"]
            tags.append(tag)
            nxt = node.get(tag)
            if nxt is None and "reason" in node:  # UploadWriteFailed
                nxt = node["reason"]
            node = nxt
        return "/".join(tags) + "/..."


class _BadRequest(Exception):
    """A 400 with a text body, as Dropbox answers arguments it cannot parse or accept."""


def _tag(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get(".tag")
    return None


def _write_error(tag: str, sub: str | None = None) -> dict:
    if tag == "conflict":
        return {".tag": "conflict", "conflict": {".tag": sub}}
    return {".tag": tag}


def _ts(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


_ACCOUNT = {
    "account_id": "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc",
    "name": {
        "given_name": "Ops",
        "surname": "Robot",
        "familiar_name": "Ops",
        "display_name": "Ops Robot",
        "abbreviated_name": "OR",
    },
    "email": "ops.robot@example.com",
    "email_verified": True,
    "disabled": False,
    "country": "US",
    "locale": "en",
    "referral_link": "https://db.tt/fake",
    "is_paired": False,
    "account_type": {".tag": "basic"},
    "root_info": {".tag": "user", "root_namespace_id": "3235641", "home_namespace_id": "3235641"},
}


# -- the HTTP plumbing ---------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeDropbox/1.0"
    timeout = 30  # an idle keep-alive connection ends after this

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def do_POST(self):  # noqa: N802 - http.server naming
        fake: FakeDropboxServer = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = fake._handle(self.path, self.headers, body)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, fake: FakeDropboxServer, context: ssl.SSLContext):
        super().__init__(address, _Handler, bind_and_activate=False)
        self.fake = fake
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def server_bind(self):
        # HTTPServer.server_bind looks up the FQDN of the address, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, in the connection's own thread, so a slow or
        # broken client never blocks the accept loop. TCP_NODELAY: headers and body go out
        # as separate writes, which Nagle's algorithm would hold for a delayed ACK (~40 ms).
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.connections_lock:
            self.connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(tls)
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        pass  # a client that hangs up mid-request is not the server's problem

    def close_connections(self):
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -- the fake service ------------------------------------------------------------------------------
class FakeDropboxServer:
    """A Dropbox API v2 double on ``https://127.0.0.1:<port>``.

    ``sock`` lets the caller hand over an already bound listening socket (the pytest plugin
    reserves its port before the SDK is imported).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        page_size: int = 3,
        max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE,
        app_key: str = "fake-app-key",
        app_secret: str = "fake-app-secret",
        refresh_token: str = "fake-refresh-token",
        token_lifetime: int = 14400,
    ):
        self._host = host
        self._port = port
        self._sock = sock
        self._defaults = {
            "page_size": page_size,
            "max_upload_size": max_upload_size,
            "token_lifetime": token_lifetime,
        }
        self.app_key = app_key
        self.app_secret = app_secret
        self.refresh_token = refresh_token
        self._lock = threading.RLock()
        self._tmpdir: str | None = None
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self.cert_path: str | None = None
        self._ids = itertools.count(1)
        self._revs = itertools.count(0x5A0000001)
        self._reset_state()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeDropboxServer:
        if self._server is not None:
            return self
        self._tmpdir = tempfile.mkdtemp(prefix="fake-dropbox-")
        self.cert_path, key_path = make_self_signed_cert(self._tmpdir, "fake-dropbox")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        server = _TLSServer((self._host, self._port), self, context)
        if self._sock is not None:
            server.socket.close()
            server.socket = self._sock
            server.server_address = self._sock.getsockname()
            server.server_name, server.server_port = server.server_address[:2]
        else:
            server.server_bind()
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-dropbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> FakeDropboxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake Dropbox server is not running")
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the value for ``DROPBOX_API_HOST`` and friends."""
        return f"{self._host}:{self.port}"

    # -- test controls ---------------------------------------------------------------------------
    def _reset_state(self) -> None:
        with self._lock:
            self.page_size: int = self._defaults["page_size"]
            self.max_upload_size: int = self._defaults["max_upload_size"]
            self.token_lifetime: int = self._defaults["token_lifetime"]
            self.files: dict[str, FakeFile] = {}
            self.folders: dict[str, FakeFolder] = {}
            self.sessions: dict[str, FakeSession] = {}
            self.requests: list[RequestRecord] = []
            self.refresh_tokens: set[str] = {self.refresh_token}
            self.issued_tokens: list[str] = []
            self._tokens: dict[str, float] = {}  # access token -> expiry (time.monotonic)
            self._failures: list[_Failure] = []
            self._cursors: dict[str, tuple[list[dict], int]] = {}
            self._corrupt_uploads = 0

    def reset(self) -> None:
        """Forget every file, folder, session, token, request and pending failure."""
        self._reset_state()

    def fail_next(
        self,
        n: int,
        status: int = 429,
        retry_after: float | None = 0,
        endpoint: str | None = None,
        *,
        after_processing: bool = False,
    ) -> None:
        """Answer the next ``n`` requests (to ``endpoint``, or any) with ``status``.

        429 carries ``Retry-After: retry_after`` and Dropbox's JSON rate-limit body; with
        ``retry_after=None`` it is a bare 429 without either. ``after_processing=True``
        carries the request out first and then answers with the failure: a lost response.
        """
        with self._lock:
            self._failures.append(
                _Failure(n, status, retry_after, self._endpoint_name(endpoint), after_processing)
            )

    def clear_failures(self) -> int:
        """End every queued failure now (the outage is over); return how many requests would
        still have failed."""
        with self._lock:
            left = sum(f.remaining for f in self._failures)
            self._failures = []
        return left

    def expire_tokens(self) -> None:
        """Every access token issued so far is now expired."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

    def add_access_token(self, token: str, lifetime: float | None = None) -> None:
        """Accept a long-lived access token (for clients configured without a refresh token)."""
        with self._lock:
            expiry = float("inf") if lifetime is None else time.monotonic() + lifetime
            self._tokens[token] = expiry

    def corrupt_next_upload(self, n: int = 1) -> None:
        """Store the next ``n`` committed uploads with one byte flipped (bit rot on arrival)."""
        with self._lock:
            self._corrupt_uploads += n

    def put_file(self, path: str, data: bytes) -> FakeFile:
        """Seed a file directly (parents are created)."""
        with self._lock:
            return self._commit(path, data, "overwrite", autorename=False, strict_conflict=False)[0]

    def make_folder(self, path: str) -> FakeFolder:
        with self._lock:
            return self._create_folder(path, autorename=False)

    def count(self, endpoint: str, status: int | None = None) -> int:
        name = self._endpoint_name(endpoint)
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.endpoint == name and (status is None or r.status == status)
            )

    def endpoints(self) -> list[str]:
        with self._lock:
            return [r.endpoint for r in self.requests]

    def file(self, path: str) -> FakeFile | None:
        with self._lock:
            return self.files.get(path.lower())

    # -- request handling ------------------------------------------------------------------------
    @staticmethod
    def _endpoint_name(endpoint: str | None) -> str | None:
        if endpoint is None:
            return None
        name = endpoint.lstrip("/")
        if name.startswith("2/"):
            name = name[2:]
        return name

    _ROUTES = {
        # endpoint: (style, handler name)
        "users/get_current_account": ("rpc", "_get_current_account"),
        "files/upload": ("upload", "_upload"),
        "files/upload_session/start": ("upload", "_session_start"),
        "files/upload_session/append_v2": ("upload", "_session_append"),
        "files/upload_session/finish": ("upload", "_session_finish"),
        "files/download": ("download", "_download"),
        "files/get_metadata": ("rpc", "_get_metadata"),
        "files/list_folder": ("rpc", "_list_folder"),
        "files/list_folder/continue": ("rpc", "_list_folder_continue"),
        "files/create_folder_v2": ("rpc", "_create_folder_v2"),
        "files/delete_v2": ("rpc", "_delete_v2"),
    }

    def _handle(self, raw_path: str, headers, body: bytes) -> _Answer:
        url = urlsplit(raw_path)
        if url.path == "/oauth2/token":
            endpoint = "oauth2/token"
        elif url.path.startswith("/2/"):
            endpoint = url.path[3:]
        else:
            endpoint = url.path.lstrip("/")
        token = None
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            token = auth[len("Bearer ") :]
        arg: Any = None
        try:
            arg = self._parse_arg(endpoint, url.query, headers, body)
        except _BadRequest as exc:
            answer = _Answer.text(400, f'Error in call to API function "{endpoint}": {exc}')
            failure = None
        else:
            failure = self._take_failure(endpoint)
            if failure is not None and not failure.after_processing:
                answer = self._failure_answer(failure)
            else:
                answer = self._dispatch(endpoint, arg, token, body)
                if failure is not None:
                    answer = self._failure_answer(failure)
        with self._lock:
            # Recorded before the answer leaves, so a test never races its own request.
            self.requests.append(RequestRecord(endpoint, arg, len(body), answer.status, token))
        return answer

    def _parse_arg(self, endpoint: str, query: str, headers, body: bytes) -> Any:
        if endpoint == "oauth2/token":
            form = parse_qs(body.decode("ascii", "replace"), keep_blank_values=True)
            return {k: v[0] for k, v in form.items()}
        route = self._ROUTES.get(endpoint)
        if route is None:
            return None
        style = route[0]
        if style == "rpc":
            if not body.strip():
                return None
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/json":
                raise _BadRequest(f"Bad HTTP \"Content-Type\" header: {ctype!r}.")
            raw = body.decode("utf-8")
        else:
            raw = headers.get("Dropbox-API-Arg")
            if raw is None:
                qs = parse_qs(query)
                raw = qs.get("arg", [None])[0]
            if raw is None:
                raise _BadRequest(
                    'Must provide HTTP header "Dropbox-API-Arg" or URL parameter "arg".'
                )
            if any(ord(c) > 126 for c in raw):
                raise _BadRequest(
                    "Dropbox-API-Arg header must be ASCII: escape characters above 0x7E as \\uXXXX"
                )
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _BadRequest(f"could not decode input as JSON: {exc}") from None

    def _take_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.endpoint in (None, endpoint):
                    failure.remaining -= 1
                    self._failures = [f for f in self._failures if f.remaining > 0]
                    return failure
        return None

    @staticmethod
    def _failure_answer(failure: _Failure) -> _Answer:
        if failure.status == 429:
            if failure.retry_after is None:
                return _Answer.text(429, "Too Many Requests")
            seconds = int(failure.retry_after)
            return _Answer.json(
                429,
                {
                    "error_summary": "too_many_requests/...",
                    "error": {"reason": {".tag": "too_many_requests"}, "retry_after": seconds},
                },
                headers={"Retry-After": str(seconds)},
            )
        if failure.status == 401:
            return _Answer.json(
                401,
                {
                    "error_summary": "expired_access_token/...",
                    "error": {".tag": "expired_access_token"},
                },
            )
        messages = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
        return _Answer.text(failure.status, messages.get(failure.status, "Injected failure"))

    def _dispatch(self, endpoint: str, arg: Any, token: str | None, body: bytes) -> _Answer:
        if endpoint == "oauth2/token":
            return self._oauth_token(arg)
        route = self._ROUTES.get(endpoint)
        if route is None:
            return _Answer.text(404, f"Unknown API function: {endpoint!r}")
        style, handler_name = route
        with self._lock:
            if token is None:
                return _Answer.text(
                    400,
                    f'Error in call to API function "{endpoint}": Must provide HTTP header '
                    '"Authorization" or URL parameter "authorization".',
                )
            expiry = self._tokens.get(token)
            if expiry is None:
                return _Answer.json(
                    401,
                    {
                        "error_summary": "invalid_access_token/...",
                        "error": {".tag": "invalid_access_token"},
                    },
                )
            if expiry <= time.monotonic():
                return _Answer.json(
                    401,
                    {
                        "error_summary": "expired_access_token/...",
                        "error": {".tag": "expired_access_token"},
                    },
                )
            try:
                if style == "rpc" and body.strip() and not isinstance(arg, dict | None):
                    raise _BadRequest("request body: expected a JSON object")
                result = getattr(self, handler_name)(arg or {}, body)
            except _RouteError as exc:
                return _Answer.json(409, {"error_summary": exc.summary(), "error": exc.error})
            except _BadRequest as exc:
                return _Answer.text(400, f'Error in call to API function "{endpoint}": {exc}')
        if style == "download":
            metadata, payload = result
            return _Answer(
                200,
                payload,
                {
                    "Content-Type": "application/octet-stream",
                    "Dropbox-API-Result": json.dumps(metadata),  # ensure_ascii: header-safe
                },
            )
        return _Answer.json(200, result)

    # -- OAuth -----------------------------------------------------------------------------------
    def _oauth_token(self, form: dict) -> _Answer:
        if form.get("grant_type") != "refresh_token":
            return _Answer.json(
                400,
                {"error": "unsupported_grant_type", "error_description": "only refresh_token"},
            )
        with self._lock:
            if form.get("client_id") != self.app_key or (
                "client_secret" in form and form["client_secret"] != self.app_secret
            ):
                return _Answer.json(
                    400,
                    {"error": "invalid_client", "error_description": "Invalid client_id or secret"},
                )
            if form.get("refresh_token") not in self.refresh_tokens:
                return _Answer.json(
                    400,
                    {"error": "invalid_grant", "error_description": "refresh token is invalid"},
                )
            token = "sl.fake-" + secrets.token_urlsafe(24)
            self._tokens[token] = time.monotonic() + self.token_lifetime
            self.issued_tokens.append(token)
            return _Answer.json(
                200,
                {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime},
            )

    # -- paths -------------------------------------------------------------------------------------
    @staticmethod
    def _required(arg: dict, name: str) -> Any:
        if name not in arg:
            raise _BadRequest(f"request body: missing required field '{name}'")
        return arg[name]

    @staticmethod
    def _check_path(path: Any, *, allow_root: bool, error_wrapper) -> str:
        """Dropbox's path rules; returns the path. ``error_wrapper(lookup_or_write_error)``
        builds the route-specific error for a malformed path."""
        if not isinstance(path, str):
            raise _BadRequest("request body: path: expected a string")
        if path == "":
            if allow_root:
                return ""
            raise _BadRequest("request body: path: The root folder is unsupported.")
        if path.startswith(("id:", "rev:", "ns:")):
            raise _BadRequest("request body: path: id/rev/ns paths are not supported by the fake")
        if not path.startswith("/"):
            raise _BadRequest(
                f"request body: path: '{path}' did not match pattern '(/(.|[\\r\\n])*)'"
            )
        parts = path.split("/")[1:]
        if path == "/" or any(p in ("", ".", "..") for p in parts):
            raise _RouteError(error_wrapper({".tag": "malformed_path"}))
        if any(ord(c) < 32 and c != "\r" for p in parts for c in p):
            raise _RouteError(error_wrapper({".tag": "malformed_path"}))
        return path

    def _lookup(self, path: str) -> FakeFile | FakeFolder | None:
        lower = path.lower()
        if lower == "":
            return FakeFolder(display="", id="id:root")
        return self.files.get(lower) or self.folders.get(lower)

    def _parent_display(self, path: str) -> tuple[str, list[str]]:
        """(display path of ``path``'s parent, folders to create); a file in the way raises
        ``conflict/file_ancestor``."""
        parts = path.split("/")[1:]
        display = ""
        missing: list[str] = []
        for i in range(len(parts) - 1):
            lower = "/" + "/".join(parts[: i + 1]).lower()
            if lower in self.files:
                raise _RouteError(_write_error("conflict", "file_ancestor"))
            folder = self.folders.get(lower)
            if folder is not None and not missing:
                display = folder.display
            else:
                display = display + "/" + parts[i]
                missing.append(display)
        return display, missing

    def _new_id(self) -> str:
        return "id:" + base64.urlsafe_b64encode(next(self._ids).to_bytes(16, "big")).decode()[:22]

    def _make_folders(self, displays: list[str]) -> None:
        for display in displays:
            self.folders.setdefault(display.lower(), FakeFolder(display, self._new_id()))

    @staticmethod
    def _autorename(display: str) -> Any:
        folder, name = posixpath.split(display)
        stem, ext = posixpath.splitext(name)
        for n in itertools.count(2):
            yield posixpath.join(folder, f"{stem} ({n}){ext}")

    # -- metadata ----------------------------------------------------------------------------------
    @staticmethod
    def _file_md(f: FakeFile, tagged: bool = True) -> dict:
        md = {".tag": "file"} if tagged else {}
        md.update(
            name=posixpath.basename(f.display),
            path_lower=f.display.lower(),
            path_display=f.display,
            id=f.id,
            client_modified=_ts(f.client_modified),
            server_modified=_ts(f.server_modified),
            rev=f.rev,
            size=f.size,
            is_downloadable=True,
            content_hash=f.content_hash,
        )
        return md

    @staticmethod
    def _folder_md(f: FakeFolder, tagged: bool = True) -> dict:
        md = {".tag": "folder"} if tagged else {}
        md.update(
            name=posixpath.basename(f.display),
            path_lower=f.display.lower(),
            path_display=f.display,
            id=f.id,
        )
        return md

    def _md(self, entry: FakeFile | FakeFolder, tagged: bool = True) -> dict:
        if isinstance(entry, FakeFile):
            return self._file_md(entry, tagged)
        return self._folder_md(entry, tagged)

    # -- writes ------------------------------------------------------------------------------------
    def _commit(
        self,
        path: str,
        data: bytes,
        mode: str,
        *,
        autorename: bool,
        strict_conflict: bool,
    ) -> tuple[FakeFile, bool]:
        """Store ``data`` at ``path`` following WriteMode rules; raises a WriteError as a
        ``_RouteError`` carrying just the WriteError JSON (callers wrap it)."""
        if mode not in ("add", "overwrite"):
            raise _BadRequest(f"request body: mode: {mode!r} is not supported by the fake")
        name = path.rsplit("/", 1)[-1]
        if name.lower() in _DISALLOWED_NAMES:
            raise _RouteError(_write_error("disallowed_name"))
        parent_display, missing = self._parent_display(path)
        content_hash = dropbox_content_hash(data)
        existing = self._lookup(path)
        conflict = None
        if isinstance(existing, FakeFolder):
            conflict = "folder"
        elif isinstance(existing, FakeFile):
            if not strict_conflict and existing.content_hash == content_hash:
                return existing, False  # identical content is not a conflict
            if mode == "add":
                conflict = "file"
            else:  # overwrite: a new revision of the same file, keeping its name's case
                existing.data = self._maybe_corrupt(data)
                existing.content_hash = dropbox_content_hash(existing.data)
                existing.rev = f"{next(self._revs):012x}"
                existing.server_modified = existing.client_modified = _now()
                return existing, True
        display = parent_display + "/" + name
        if conflict is not None:
            if not autorename:
                raise _RouteError(_write_error("conflict", conflict))
            for candidate in self._autorename(display):
                if self._lookup(candidate) is None:
                    display = candidate
                    break
        self._make_folders(missing)
        stored = self._maybe_corrupt(data)
        now = _now()
        f = FakeFile(
            display=display,
            data=stored,
            content_hash=dropbox_content_hash(stored),
            rev=f"{next(self._revs):012x}",
            id=self._new_id(),
            server_modified=now,
            client_modified=now,
        )
        self.files[display.lower()] = f
        return f, True

    def _maybe_corrupt(self, data: bytes) -> bytes:
        if self._corrupt_uploads <= 0:
            return bytes(data)
        self._corrupt_uploads -= 1
        if not data:
            return b"\x00"
        return bytes(data[:-1]) + bytes([data[-1] ^ 0xFF])

    def _create_folder(self, path: str, autorename: bool) -> FakeFolder:
        name = path.rsplit("/", 1)[-1]
        if name.lower() in _DISALLOWED_NAMES:
            raise _RouteError(_write_error("disallowed_name"))
        parent_display, missing = self._parent_display(path)
        display = parent_display + "/" + name
        existing = self._lookup(path)
        if existing is not None:
            kind = "folder" if isinstance(existing, FakeFolder) else "file"
            if not autorename:
                raise _RouteError(_write_error("conflict", kind))
            for candidate in self._autorename(display):
                if self._lookup(candidate) is None:
                    display = candidate
                    break
        self._make_folders(missing + [display])
        return self.folders[display.lower()]

    @staticmethod
    def _commit_args(arg: dict) -> tuple[str, bool, bool]:
        mode = _tag(arg.get("mode", "add")) or "add"
        return mode, bool(arg.get("autorename", False)), bool(arg.get("strict_conflict", False))

    def _check_payload(self, body: bytes, arg: dict, error_for) -> None:
        if len(body) > self.max_upload_size:
            raise _RouteError(error_for("payload_too_large"))
        expected = arg.get("content_hash")
        if expected is not None and expected != dropbox_content_hash(body):
            raise _RouteError(error_for("content_hash_mismatch"))

    # -- routes ------------------------------------------------------------------------------------
    def _get_current_account(self, arg: dict, body: bytes) -> dict:
        return dict(_ACCOUNT)

    def _upload(self, arg: dict, body: bytes) -> dict:
        session_id = "upload-" + secrets.token_hex(8)

        def write_failed(write_error: dict) -> dict:
            return {".tag": "path", "reason": write_error, "upload_session_id": session_id}

        path = self._check_path(
            self._required(arg, "path"), allow_root=False, error_wrapper=write_failed
        )
        self._check_payload(body, arg, lambda tag: {".tag": tag})
        mode, autorename, strict = self._commit_args(arg)
        try:
            f, _ = self._commit(path, body, mode, autorename=autorename, strict_conflict=strict)
        except _RouteError as exc:
            raise _RouteError(write_failed(exc.error)) from None
        return self._file_md(f, tagged=False)

    def _session_start(self, arg: dict, body: bytes) -> dict:
        if _tag(arg.get("session_type")) == "concurrent":
            raise _BadRequest("concurrent upload sessions are not supported by the fake")
        self._check_payload(body, arg, lambda tag: {".tag": tag})
        session = FakeSession(id="sess-" + secrets.token_hex(12), data=bytearray(body))
        session.closed = bool(arg.get("close", False))
        self.sessions[session.id] = session
        return {"session_id": session.id}

    def _session_lookup(self, cursor: Any) -> FakeSession:
        """The session for ``cursor``; raises the bare UploadSessionLookupError JSON."""
        if not isinstance(cursor, dict) or "session_id" not in cursor or "offset" not in cursor:
            raise _BadRequest("request body: cursor: missing session_id or offset")
        session = self.sessions.get(cursor["session_id"])
        if session is None:
            raise _RouteError({".tag": "not_found"})
        if int(cursor["offset"]) != len(session.data):
            raise _RouteError({".tag": "incorrect_offset", "correct_offset": len(session.data)})
        return session

    def _session_append(self, arg: dict, body: bytes) -> None:
        session = self._session_lookup(self._required(arg, "cursor"))
        if session.closed:
            raise _RouteError({".tag": "closed"})
        self._check_payload(body, arg, lambda tag: {".tag": tag})
        session.data.extend(body)
        if arg.get("close"):
            session.closed = True
        return None

    def _session_finish(self, arg: dict, body: bytes) -> dict:
        try:
            session = self._session_lookup(self._required(arg, "cursor"))
            if session.closed and body:
                raise _RouteError({".tag": "closed"})
        except _RouteError as exc:
            raise _RouteError({".tag": "lookup_failed", "lookup_failed": exc.error}) from None
        commit = self._required(arg, "commit")
        if not isinstance(commit, dict):
            raise _BadRequest("request body: commit: expected an object")
        path = self._check_path(
            self._required(commit, "path"),
            allow_root=False,
            error_wrapper=lambda e: {".tag": "path", "path": e},
        )
        self._check_payload(body, arg, lambda tag: {".tag": tag})
        mode, autorename, strict = self._commit_args(commit)
        data = bytes(session.data) + body
        try:
            f, _ = self._commit(path, data, mode, autorename=autorename, strict_conflict=strict)
        except _RouteError as exc:
            raise _RouteError({".tag": "path", "path": exc.error}) from None
        del self.sessions[session.id]
        return self._file_md(f, tagged=False)

    def _download(self, arg: dict, body: bytes) -> tuple[dict, bytes]:
        def wrap(lookup_error: dict) -> dict:
            return {".tag": "path", "path": lookup_error}

        path = self._check_path(self._required(arg, "path"), allow_root=False, error_wrapper=wrap)
        entry = self._lookup(path)
        if entry is None:
            raise _RouteError(wrap({".tag": "not_found"}))
        if isinstance(entry, FakeFolder):
            raise _RouteError(wrap({".tag": "not_file"}))
        return self._file_md(entry, tagged=False), entry.data

    def _get_metadata(self, arg: dict, body: bytes) -> dict:
        def wrap(lookup_error: dict) -> dict:
            return {".tag": "path", "path": lookup_error}

        path = self._check_path(self._required(arg, "path"), allow_root=False, error_wrapper=wrap)
        entry = self._lookup(path)
        if entry is None:
            raise _RouteError(wrap({".tag": "not_found"}))
        return self._md(entry)

    def _list_folder(self, arg: dict, body: bytes) -> dict:
        def wrap(lookup_error: dict) -> dict:
            return {".tag": "path", "path": lookup_error}

        path = self._check_path(self._required(arg, "path"), allow_root=True, error_wrapper=wrap)
        entry = self._lookup(path)
        if entry is None:
            raise _RouteError(wrap({".tag": "not_found"}))
        if isinstance(entry, FakeFile):
            raise _RouteError(wrap({".tag": "not_folder"}))
        recursive = bool(arg.get("recursive", False))
        limit = arg.get("limit")
        prefix = entry.display.lower() + "/"
        depth = prefix.count("/")
        found: list[FakeFile | FakeFolder] = []
        for lower, item in itertools.chain(self.folders.items(), self.files.items()):
            if not lower.startswith(prefix):
                continue
            if not recursive and lower.count("/") != depth:
                continue
            found.append(item)
        found.sort(key=lambda e: e.display.lower())
        entries = [self._md(e) for e in found]
        if recursive and path != "":
            entries.insert(0, self._md(entry))  # Dropbox lists the folder itself first
        page = self.page_size if limit is None else max(1, min(int(limit), self.page_size))
        cursor = "cursor-" + secrets.token_hex(12)
        self._cursors[cursor] = (entries, page)
        return self._page(cursor, 0)

    def _page(self, cursor: str, start: int) -> dict:
        entries, page = self._cursors[cursor]
        chunk = entries[start : start + page]
        end = start + len(chunk)
        next_cursor = f"{cursor}@{end}"
        return {"entries": chunk, "cursor": next_cursor, "has_more": end < len(entries)}

    def _list_folder_continue(self, arg: dict, body: bytes) -> dict:
        raw = self._required(arg, "cursor")
        base, _, pos = str(raw).rpartition("@")
        if base not in self._cursors or not pos.isdigit():
            raise _RouteError({".tag": "reset"})
        return self._page(base, int(pos))

    def _create_folder_v2(self, arg: dict, body: bytes) -> dict:
        def wrap(write_error: dict) -> dict:
            return {".tag": "path", "path": write_error}

        path = self._check_path(self._required(arg, "path"), allow_root=False, error_wrapper=wrap)
        try:
            folder = self._create_folder(path, bool(arg.get("autorename", False)))
        except _RouteError as exc:
            raise _RouteError(wrap(exc.error)) from None
        return {"metadata": self._folder_md(folder, tagged=False)}

    def _delete_v2(self, arg: dict, body: bytes) -> dict:
        def wrap(lookup_error: dict) -> dict:
            return {".tag": "path_lookup", "path_lookup": lookup_error}

        path = self._check_path(self._required(arg, "path"), allow_root=False, error_wrapper=wrap)
        entry = self._lookup(path)
        if entry is None:
            raise _RouteError(wrap({".tag": "not_found"}))
        md = self._md(entry)
        lower = path.lower()
        if isinstance(entry, FakeFile):
            del self.files[lower]
        else:
            prefix = lower + "/"
            del self.folders[lower]
            for table in (self.files, self.folders):
                for key in [k for k in table if k.startswith(prefix)]:
                    del table[key]
        return {"metadata": md}
