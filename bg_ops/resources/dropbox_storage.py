"""Dropbox: the production storage backend, with the same contract as ``LocalStorageResource``.

Paths given to this resource are relative to ``root`` (``/bg_ops``): ``/acme/a.pdf`` lives at
``/bg_ops/acme/a.pdf`` in Dropbox and comes back as ``/acme/a.pdf``.

Retries are ours, not the SDK's: the SDK is told never to retry (its default retries a 429
forever and sleeps with ``time.sleep``). Here a 429 waits ``Retry-After`` (or 1, 2, 4 … s
without one) at most ``max_rate_limit_retries`` times and ``max_rate_limit_wait_seconds`` in
total, then raises ``StorageRateLimited``; 5xx answers and dropped connections are retried
twice, then raise ``StorageTransientError``. Every wait goes through ``self._sleep`` so
tests can record instead of sleep.

``dropbox`` is imported inside methods: importing it costs about a second, and the CLI must
start fast.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from bg_ops.resources.storage import (
    CloudEntry,
    CloudStorageResource,
    StorageAuthError,
    StorageBadPath,
    StorageConflict,
    StorageError,
    StorageNotFound,
    StorageRateLimited,
    StorageTransientError,
    normalize_cloud_path,
)
from bg_ops.util.content_hash import ContentHasher, content_hash_bytes, content_hash_file
from bg_ops.util.masking import mask_email

_SECRET_FIELDS = frozenset({"app_secret", "refresh_token", "access_token"})

# Dropbox refuses more than 150 MiB in one request, whatever the settings say.
_MAX_REQUEST_BYTES = 150 * 1024 * 1024

# Waits before the 1st and 2nd retry of a 5xx / dropped connection.
_TRANSIENT_BACKOFF = (1.0, 2.0)
_MAX_RATE_LIMIT_BACKOFF = 60.0

# Error tags (anywhere in the SDK's decoded error) and what they mean for us.
_BAD_PATH_TAGS = {"malformed_path", "disallowed_name"}
_NOT_FOUND_TAGS = {"not_found", "not_file", "not_folder"}
_TRANSIENT_TAGS = {"too_many_write_operations", "content_hash_mismatch", "reset"}


def _error_tags(error: Any) -> list[str]:
    """The chain of union tags in a decoded Dropbox route error.

    ``UploadError.path(UploadWriteFailed(reason=WriteError.conflict(file)))`` ->
    ``["path", "conflict", "file"]``.
    """
    tags: list[str] = []
    node = error
    for _ in range(10):
        tag = getattr(node, "_tag", None)
        if tag is not None:
            tags.append(tag)
            node = getattr(node, "_value", None)
        elif node is not None and hasattr(node, "reason"):
            node = node.reason  # UploadWriteFailed
        else:
            break
    return tags


def _correct_offset(error: Any) -> int | None:
    """``correct_offset`` from an ``incorrect_offset`` error (possibly nested), else None."""
    node = error
    for _ in range(10):
        if node is None:
            return None
        if hasattr(node, "correct_offset"):
            return int(node.correct_offset)
        node = getattr(node, "_value", None)
    return None


class DropboxStorageResource(CloudStorageResource):
    """Keeps archives and backups in Dropbox under ``root``.

    Credentials: ``refresh_token`` + ``app_key`` (+ ``app_secret`` unless the token came from
    PKCE) for unattended use; ``access_token`` alone works until it expires (4 hours).
    Pass secrets as ``dg.EnvVar`` so they never appear in the UI.
    """

    root: str = ""
    app_key: str | None = None
    app_secret: str | None = None
    refresh_token: str | None = None
    access_token: str | None = None
    ca_certs: str | None = None  # tests only: trust this certificate bundle instead
    timeout_seconds: float = 100
    single_upload_limit: int = 150 * 1024 * 1024
    chunk_size: int = 8 * 1024 * 1024
    max_rate_limit_retries: int = 5
    max_rate_limit_wait_seconds: float = 300

    _client_obj: Any = PrivateAttr(default=None)
    _client_lock: Any = PrivateAttr(default_factory=threading.Lock)
    _sleep: Callable[[float], Any] = PrivateAttr(default=time.sleep)

    # -- plumbing ------------------------------------------------------------------------------
    def __repr_args__(self):
        # pydantic's repr would print tokens: never.
        for name, value in super().__repr_args__():
            if name in _SECRET_FIELDS and value is not None:
                yield name, "***"
            else:
                yield name, value

    def set_sleep(self, fn: Callable[[float], Any]) -> None:
        """Replace ``time.sleep`` for rate-limit and retry waits (tests record instead)."""
        self._sleep = fn

    def describe(self) -> str:
        return f"Dropbox under {self._root or '/'}"

    @property
    def _root(self) -> str:
        root = (self.root or "").strip()
        if root and not root.startswith("/"):
            root = "/" + root  # "bg_ops" in settings means "/bg_ops"
        try:
            return normalize_cloud_path(root)
        except StorageBadPath as exc:
            raise StorageBadPath(f"Dropbox root {self.root!r} is not a valid path: {exc}") from None

    def _full(self, cloud_path: str) -> str:
        """Dropbox path for a path relative to root (``""`` is Dropbox's own root)."""
        return self._root + normalize_cloud_path(cloud_path)

    def _relative(self, path_display: str) -> str:
        """Root-relative path of a Dropbox ``path_display``, keeping its case."""
        depth = len(self._root.split("/")) - 1 if self._root else 0
        parts = path_display.split("/")[1:]
        rest = parts[depth:]
        return "/" + "/".join(rest) if rest else ""

    def _client(self):
        with self._client_lock:
            if self._client_obj is None:
                self._client_obj = self._build_client()
            return self._client_obj

    def _build_client(self):
        import dropbox

        if self.refresh_token:
            if not self.app_key:
                raise StorageAuthError("Dropbox refresh_token needs app_key")
        elif not self.access_token:
            raise StorageAuthError(
                "no Dropbox credentials: set refresh_token with app_key (and app_secret), "
                "or access_token"
            )
        session = dropbox.create_session(ca_certs=self.ca_certs)
        if self.ca_certs:
            # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment would override ca_certs.
            session.trust_env = False
        return dropbox.Dropbox(
            oauth2_access_token=self.access_token or None,
            oauth2_refresh_token=self.refresh_token or None,
            app_key=self.app_key or None,
            app_secret=self.app_secret or None,
            max_retries_on_error=0,
            max_retries_on_rate_limit=0,  # never None: that retries a 429 forever
            timeout=self.timeout_seconds,
            session=session,
            user_agent="bg_ops",
        )

    def _call_raw(self, what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` with our retry policy. Route errors (``ApiError``) are raised unchanged
        unless they are worth retrying; everything else becomes a ``StorageError``."""
        import requests
        from dropbox import exceptions as dbx_exc
        from stone.backends.python_rsrc.stone_validators import ValidationError

        rate_limited = 0
        rate_waited = 0.0
        transient = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except dbx_exc.RateLimitError as exc:
                retry_after = exc.backoff
                if retry_after is not None:
                    wait = max(0.0, float(retry_after))
                else:
                    wait = min(2.0**rate_limited, _MAX_RATE_LIMIT_BACKOFF)
                if (
                    rate_limited >= self.max_rate_limit_retries
                    or rate_waited + wait > self.max_rate_limit_wait_seconds
                ):
                    raise StorageRateLimited(
                        f"Dropbox rate limit on {what}: still limited after {rate_limited} "
                        f"retries and {rate_waited:g} s of waiting",
                        retry_after=wait,
                    ) from None
                rate_limited += 1
                rate_waited += wait
                self._sleep(wait)
                continue
            except dbx_exc.AuthError as exc:
                err = StorageAuthError(self._auth_message(what, exc.error))
                err.reason = getattr(exc.error, "_tag", None)
                raise err from None
            except dbx_exc.BadInputError as exc:
                message = str(exc.message or "")
                if "invalid_grant" in message or "invalid_client" in message:
                    raise StorageAuthError(
                        f"Dropbox refused the app credentials on {what}: check app_key, "
                        "app_secret and refresh_token"
                    ) from None
                raise StorageError(f"Dropbox rejected {what}: {message[:300]}") from None
            except dbx_exc.InternalServerError as exc:
                problem = f"Dropbox server error {exc.status_code}"
            except requests.exceptions.SSLError as exc:
                raise StorageError(
                    f"TLS verification failed talking to Dropbox on {what}: {exc}"
                ) from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                problem = f"connection to Dropbox failed ({type(exc).__name__})"
            except dbx_exc.ApiError as exc:
                tags = _error_tags(exc.error)
                if "too_many_write_operations" not in tags:
                    raise
                problem = "Dropbox is busy with other writes to this folder"
            except ValidationError as exc:
                # The SDK checks arguments before sending; ours are paths, checked already,
                # so this is a path Dropbox's patterns refuse.
                raise StorageBadPath(f"Dropbox cannot take the path for {what}: {exc}") from None
            except dbx_exc.HttpError as exc:
                raise StorageError(
                    f"Dropbox answered HTTP {exc.status_code} on {what}: {str(exc.body)[:300]}"
                ) from None
            # A transient problem: retry a couple of times, then give up.
            if transient >= len(_TRANSIENT_BACKOFF):
                raise StorageTransientError(
                    f"{problem} on {what}, after {transient + 1} attempts"
                ) from None
            self._sleep(_TRANSIENT_BACKOFF[transient])
            transient += 1

    def _call(self, what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``_call_raw`` with route errors turned into ``StorageError`` subclasses."""
        from dropbox import exceptions as dbx_exc

        try:
            return self._call_raw(what, fn, *args, **kwargs)
        except dbx_exc.ApiError as exc:
            raise self._api_error(what, exc.error) from None

    @staticmethod
    def _auth_message(what: str, error: Any) -> str:
        tag = getattr(error, "_tag", None) or "unknown"
        hints = {
            "invalid_access_token": "the access token is invalid or revoked",
            "expired_access_token": "the access token expired and could not be refreshed",
            "missing_scope": "the app lacks a permission (scope) this needs",
            "user_suspended": "the Dropbox account is suspended",
        }
        return f"Dropbox authentication failed on {what}: {hints.get(tag, tag)}"

    @staticmethod
    def _api_error(what: str, error: Any) -> StorageError:
        tags = _error_tags(error)
        detail = "/".join(tags) or "unknown error"
        message = f"Dropbox refused {what}: {detail}"
        tagset = set(tags)
        if tagset & _BAD_PATH_TAGS:
            return StorageBadPath(message)
        if "conflict" in tagset:
            return StorageConflict(message)
        if "lookup_failed" in tagset:  # an upload session went missing or out of step
            return StorageTransientError(message)
        if tagset & _NOT_FOUND_TAGS:
            return StorageNotFound(message)
        if tagset & _TRANSIENT_TAGS:
            return StorageTransientError(message)
        return StorageError(message)

    def _entry(self, md: Any) -> CloudEntry:
        from dropbox import files

        path = self._relative(md.path_display or md.path_lower or "")
        if isinstance(md, files.FileMetadata):
            modified = md.server_modified
            if modified is not None and modified.tzinfo is None:
                modified = modified.replace(tzinfo=UTC)
            return CloudEntry(
                path=path,
                is_folder=False,
                size=md.size,
                content_hash=md.content_hash,
                server_modified=modified,
                rev=md.rev,
            )
        return CloudEntry(path=path, is_folder=True)

    # -- operations ----------------------------------------------------------------------------
    def upload(self, local_path, cloud_path, *, mode="add", autorename=False) -> CloudEntry:
        from dropbox import files

        source = Path(local_path)
        try:
            st = source.stat()
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise StorageNotFound(f"local file {source} does not exist")
        if mode not in ("add", "overwrite"):
            raise ValueError(f"unknown write mode {mode!r}")
        rel = normalize_cloud_path(cloud_path)
        if not rel:
            raise StorageBadPath("cannot write a file at the storage root")
        full = self._full(rel)
        size = st.st_size
        write_mode = files.WriteMode.add if mode == "add" else files.WriteMode.overwrite
        what = f"upload to {rel or '/'}"
        limit = min(self.single_upload_limit, _MAX_REQUEST_BYTES)

        if size <= limit:
            # Read once; the hash is of the very bytes sent, and Dropbox checks them against it
            # (content_hash_mismatch) before storing anything.
            data = source.read_bytes()
            if len(data) > limit:
                raise StorageTransientError(f"{what}: the local file grew while it was read")
            local_hash = content_hash_bytes(data)
            md = self._call(
                what,
                self._client().files_upload,
                data,
                full,
                mode=write_mode,
                autorename=autorename,
                strict_conflict=False,
                content_hash=local_hash,
            )
        else:
            local_hash = content_hash_file(source)
            # Before sending hundreds of MiB, settle the cases Dropbox would settle anyway.
            if mode == "add":
                existing = self.get_metadata(rel)
                if existing is not None and not existing.is_folder:
                    if existing.content_hash == local_hash:
                        return existing
                    if not autorename:
                        raise StorageConflict(f"{rel} already exists with different content")
                elif existing is not None and not autorename:
                    raise StorageConflict(f"{rel} is a folder")
            commit = files.CommitInfo(
                path=full, mode=write_mode, autorename=autorename, strict_conflict=False
            )
            md = self._upload_session(what, source, size, commit, local_hash)

        entry = self._entry(md)
        if entry.content_hash != local_hash:
            raise StorageTransientError(
                f"{what}: Dropbox stored content hash {entry.content_hash}, the local file has "
                f"{local_hash}; the upload was damaged on the way"
            )
        return entry

    def _upload_session(self, what: str, source: Path, size: int, commit, local_hash: str):
        """Send ``source`` in ``chunk_size`` pieces; resume at Dropbox's offset when a
        lost answer leaves us out of step."""
        from dropbox import exceptions as dbx_exc
        from dropbox import files

        client = self._client()
        chunk = max(1, min(int(self.chunk_size), _MAX_REQUEST_BYTES))
        with open(source, "rb") as fh:
            first = fh.read(min(chunk, size))
            started = self._call(what, client.files_upload_session_start, first)
            session_id = started.session_id
            offset = len(first)
            resyncs = 0
            while True:
                fh.seek(offset)
                remaining = size - offset
                data = fh.read(min(chunk, remaining))
                if len(data) < min(chunk, remaining):
                    raise StorageTransientError(f"{what}: the local file shrank while uploading")
                cursor = files.UploadSessionCursor(session_id=session_id, offset=offset)
                last = offset + len(data) >= size
                try:
                    if last:
                        return self._call_raw(
                            what, client.files_upload_session_finish, data, cursor, commit
                        )
                    self._call_raw(what, client.files_upload_session_append_v2, data, cursor)
                    offset += len(data)
                    continue
                except dbx_exc.ApiError as exc:
                    correct = _correct_offset(exc.error)
                    tags = _error_tags(exc.error)
                    if correct is not None and resyncs < 10 and 0 <= correct <= size:
                        # Dropbox got data whose answer we lost: carry on where it is.
                        resyncs += 1
                        offset = correct
                        continue
                    if last and "not_found" in tags and "lookup_failed" in tags:
                        # A finish whose answer was lost consumed the session: check whether
                        # the file is there with our content.
                        done = self._call(what, client.files_get_metadata, commit.path)
                        if (
                            isinstance(done, files.FileMetadata)
                            and done.content_hash == local_hash
                        ):
                            return done
                    raise self._api_error(what, exc.error) from None

    def download(self, cloud_path, local_path) -> CloudEntry:
        rel = normalize_cloud_path(cloud_path)
        if not rel and not self._root:
            raise StorageNotFound("no file at /")
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def fetch():
            md, response = self._client().files_download(self._full(rel))
            hasher = ContentHasher()
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-", suffix=".part")
            try:
                with response, os.fdopen(fd, "wb") as out:
                    for block in response.iter_content(1024 * 1024):
                        hasher.update(block)
                        out.write(block)
                if md.content_hash and hasher.hexdigest() != md.content_hash:
                    raise StorageTransientError(
                        f"download of {rel}: content hash differs from Dropbox's; "
                        "damaged on the way"
                    )
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return md

        md = self._call(f"download of {rel}", fetch)
        return self._entry(md)

    def get_metadata(self, cloud_path) -> CloudEntry | None:
        from dropbox import exceptions as dbx_exc

        rel = normalize_cloud_path(cloud_path)
        full = self._full(rel)
        if not full:
            return CloudEntry(path="", is_folder=True)  # Dropbox has no metadata for its root
        try:
            md = self._call_raw(f"lookup of {rel or '/'}", self._client().files_get_metadata, full)
        except dbx_exc.ApiError as exc:
            if "not_found" in _error_tags(exc.error):
                return None
            raise self._api_error(f"lookup of {rel or '/'}", exc.error) from None
        return self._entry(md)

    def list_folder(self, cloud_path, *, recursive=True) -> Iterator[CloudEntry]:
        from dropbox import files

        rel = normalize_cloud_path(cloud_path)
        full = self._full(rel)
        what = f"listing of {rel or '/'}"
        client = self._client()
        result = self._call(what, client.files_list_folder, full, recursive=recursive)
        own = full.lower()
        while True:
            for md in result.entries:
                if isinstance(md, files.DeletedMetadata):
                    continue
                # A recursive listing includes the listed folder itself; ours does not.
                if (md.path_lower or "") == own:
                    continue
                yield self._entry(md)
            if not result.has_more:
                return
            result = self._call(what, client.files_list_folder_continue, result.cursor)

    def create_folder(self, cloud_path) -> CloudEntry:
        from dropbox import exceptions as dbx_exc

        rel = normalize_cloud_path(cloud_path)
        full = self._full(rel)
        if not full:
            return CloudEntry(path="", is_folder=True)
        what = f"creating folder {rel or '/'}"
        try:
            result = self._call_raw(what, self._client().files_create_folder_v2, full)
        except dbx_exc.ApiError as exc:
            tags = _error_tags(exc.error)
            if tags[-2:] == ["conflict", "folder"]:
                existing = self.get_metadata(rel)
                if existing is not None and existing.is_folder:
                    return existing
            if tags[-2:] == ["conflict", "file"]:
                raise StorageConflict(f"{rel} is a file, not a folder") from None
            raise self._api_error(what, exc.error) from None
        return self._entry(result.metadata)

    def delete(self, cloud_path) -> None:
        rel = normalize_cloud_path(cloud_path)
        if not rel:
            raise StorageBadPath("refusing to delete the storage root")
        self._call(f"deleting {rel}", self._client().files_delete_v2, self._full(rel))

    def check_connection(self) -> str:
        from dropbox import exceptions as dbx_exc

        client = self._client()
        account = ""
        try:
            info = self._call_raw("account check", client.users_get_current_account)
            account = f" (account {mask_email(info.email)})"
        except StorageAuthError as exc:
            if getattr(exc, "reason", None) != "missing_scope":  # files scopes suffice
                raise
        except dbx_exc.ApiError as exc:
            raise self._api_error("account check", exc.error) from None
        root = self.get_metadata("")
        if root is not None and not root.is_folder:
            raise StorageError(f"Dropbox root {self._root} is a file, not a folder")
        return self.describe() + account

