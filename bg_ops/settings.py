"""The configuration contract: every environment variable bg_ops reads, validated in one place.

``load_settings()`` is called when definitions load and at the start of every ``bg-ops``
command, never at import time. A bad value raises ``ConfigError`` whose lines each name the
variable and the fix. Secrets are kept out of ``repr`` and never logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path

ENV_VARS = (
    "BG_OPS_DATABASE_URL",
    "BG_OPS_FILES_ROOT",
    "BG_OPS_MAIL_BACKEND",
    "BG_OPS_OUTBOX_DIR",
    "BG_OPS_SMTP_HOST",
    "BG_OPS_SMTP_PORT",
    "BG_OPS_SMTP_SECURITY",
    "BG_OPS_SMTP_USERNAME",
    "BG_OPS_SMTP_PASSWORD",
    "BG_OPS_SMTP_TIMEOUT",
    "BG_OPS_SMTP_PIPELINING",
    "BG_OPS_MAIL_FROM",
    "BG_OPS_ADMIN_EMAILS",
    "BG_OPS_STORAGE_BACKEND",
    "BG_OPS_STORAGE_DIR",
    "BG_OPS_DROPBOX_ROOT",
    "DROPBOX_APP_KEY",
    "DROPBOX_APP_SECRET",
    "DROPBOX_REFRESH_TOKEN",
    "DROPBOX_ACCESS_TOKEN",
    "BG_OPS_PAYMENT_SIGNING_SECRET",
    "BG_OPS_PAYMENT_SIGNING_SECRET_NEXT",
    "BG_OPS_INTAKE_MAX_BODY_BYTES",
    "BG_OPS_UI_BASE_URL",
    "BG_OPS_RETENTION_DAYS",
    "BG_OPS_TEMP_STATE_RETENTION_HOURS",
    "BG_OPS_NOTIFICATION_RETENTION_DAYS",
    "BG_OPS_REMINDER_LOG_RETENTION_DAYS",
    "BG_OPS_DB_BACKUP_CRON",
    "BG_OPS_DB_BACKUP_KEEP_DAILY",
    "BG_OPS_DB_BACKUP_KEEP_WEEKLY",
    "BG_OPS_DB_BACKUP_FOLDER",
)
SECRET_VARS = frozenset(
    {"BG_OPS_SMTP_PASSWORD", "DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN", "DROPBOX_ACCESS_TOKEN",
     "BG_OPS_PAYMENT_SIGNING_SECRET", "BG_OPS_PAYMENT_SIGNING_SECRET_NEXT"}
)

MAIL_BACKENDS = ("outbox", "smtp")
STORAGE_BACKENDS = ("local", "dropbox")
SMTP_SECURITIES = ("none", "starttls", "ssl")
DEFAULT_SMTP_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
DEFAULT_HOME_DIRNAME = ".bg_ops"
DEFAULT_INTAKE_MAX_BODY_BYTES = 1024 * 1024  # payment webhooks are a few KiB
INTAKE_BODY_LIMITS = (1024, 64 * 1024 * 1024)
DEFAULT_UI_BASE_URL = "http://127.0.0.1:3000"

# A bare address in dot-atom form (no display name, comment, quote or space): the standard
# parser (``email.utils.parseaddr``) returns ("", raw) for exactly these, so the message
# builder and the SMTP client skip it for them.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
BARE_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")
_ADDRESS_RE = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*$")


class ConfigError(Exception):
    """One or more configuration problems; each line names the variable and the fix."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def is_valid_address(address: str) -> bool:
    return bool(_ADDRESS_RE.match(address or ""))


def normalize_database_url(url: str) -> str:
    """Force the explicit psycopg2 driver for PostgreSQL (ENVIRONMENT.md: bare URLs pick psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Settings:
    database_url: str
    files_root: Path
    mail_backend: str
    outbox_dir: Path
    smtp_host: str | None
    smtp_port: int
    smtp_security: str
    smtp_username: str | None
    smtp_timeout: float
    mail_from: str
    admin_emails: tuple[str, ...]
    storage_backend: str
    storage_dir: Path
    dropbox_root: str
    dropbox_app_key: str | None
    home: Path
    smtp_pipelining: bool = True
    intake_max_body_bytes: int = DEFAULT_INTAKE_MAX_BODY_BYTES
    ui_base_url: str = DEFAULT_UI_BASE_URL  # links to runs in alert mails
    # Maintenance (O4, O5): retention of bg_ops's tables and Dagster's history; database backups.
    retention_days: int = 90
    temp_state_retention_hours: int = 24
    notification_retention_days: int = 90
    reminder_log_retention_days: int = 400
    db_backup_cron: str = "30 2 * * *"
    db_backup_keep_daily: int = 7
    db_backup_keep_weekly: int = 4
    db_backup_folder: str = "/_system/db_backups"
    # Secrets: which are set, never their values (resources read them through dg.EnvVar).
    secrets_set: frozenset[str] = field(default_factory=frozenset)
    _secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def secret(self, name: str) -> str | None:
        return self._secrets.get(name)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(
    environ: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> Settings:
    """Read and validate the whole configuration; raise ``ConfigError`` listing every problem."""
    env = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    home = base / DEFAULT_HOME_DIRNAME
    problems: list[str] = []

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    # -- database -----------------------------------------------------------------------
    database_url = get("BG_OPS_DATABASE_URL") or f"sqlite:///{home / 'bg_ops.db'}"
    database_url = normalize_database_url(database_url)
    try:
        from sqlalchemy.engine import make_url

        url = make_url(database_url)
        if url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg2"):
            problems.append(
                f"BG_OPS_DATABASE_URL uses the driver {url.drivername!r}: use "
                "'postgresql+psycopg2://user:password@host:5432/db' or 'sqlite:///path/to/file.db'"
            )
        elif url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:"):
            problems.append(
                "BG_OPS_DATABASE_URL points at an in-memory SQLite database, which no other "
                "process can see: use 'sqlite:///path/to/file.db'"
            )
        elif url.drivername == "postgresql+psycopg2" and not url.database:
            problems.append(
                "BG_OPS_DATABASE_URL names no database: add it, e.g. "
                "'postgresql+psycopg2://user:password@host:5432/bg_ops'"
            )
    except Exception:  # sqlalchemy.exc.ArgumentError and friends
        problems.append(
            "BG_OPS_DATABASE_URL is not a database URL: use "
            "'postgresql+psycopg2://user:password@host:5432/db' or 'sqlite:///path/to/file.db'"
        )

    # -- files --------------------------------------------------------------------------
    files_root_raw = get("BG_OPS_FILES_ROOT")
    files_root = Path(files_root_raw).expanduser() if files_root_raw else home / "files"
    if files_root_raw and not files_root.is_dir():
        problems.append(
            f"BG_OPS_FILES_ROOT={files_root_raw} is not an existing folder: create it or point "
            "the variable at the folder that holds the platform's files"
        )

    # -- mail ---------------------------------------------------------------------------
    mail_backend = (get("BG_OPS_MAIL_BACKEND") or "outbox").lower()
    if mail_backend not in MAIL_BACKENDS:
        problems.append(
            f"BG_OPS_MAIL_BACKEND={get('BG_OPS_MAIL_BACKEND')!r} is not a mail backend: "
            "use 'outbox' (default, .eml files in BG_OPS_OUTBOX_DIR) or 'smtp'"
        )
    outbox_dir = Path(get("BG_OPS_OUTBOX_DIR") or home / "outbox").expanduser()

    smtp_security = (get("BG_OPS_SMTP_SECURITY") or "starttls").lower()
    if smtp_security not in SMTP_SECURITIES:
        problems.append(
            f"BG_OPS_SMTP_SECURITY={get('BG_OPS_SMTP_SECURITY')!r} is not valid: use 'starttls' "
            "(default), 'ssl' (implicit TLS) or 'none'"
        )
        smtp_security = "starttls"
    smtp_port = DEFAULT_SMTP_PORTS[smtp_security]
    if get("BG_OPS_SMTP_PORT") is not None:
        raw = get("BG_OPS_SMTP_PORT")
        if raw.isdigit() and 1 <= int(raw) <= 65535:
            smtp_port = int(raw)
        else:
            problems.append(
                f"BG_OPS_SMTP_PORT={raw!r} is not a port number: use 1-65535 "
                "(587 for STARTTLS, 465 for implicit TLS, 25 for plain)"
            )
    smtp_timeout = 30.0
    if get("BG_OPS_SMTP_TIMEOUT") is not None:
        raw = get("BG_OPS_SMTP_TIMEOUT")
        try:
            smtp_timeout = float(raw)
            if not 0 < smtp_timeout <= 600:
                raise ValueError
        except ValueError:
            problems.append(
                f"BG_OPS_SMTP_TIMEOUT={raw!r} is not valid: use seconds between 0 and 600, e.g. 30"
            )
    smtp_pipelining = True
    if get("BG_OPS_SMTP_PIPELINING") is not None:
        raw = get("BG_OPS_SMTP_PIPELINING")
        if raw.lower() in ("on", "off"):
            smtp_pipelining = raw.lower() == "on"
        else:
            problems.append(
                f"BG_OPS_SMTP_PIPELINING={raw!r} is not valid: use 'on' (default: pipeline commands "
                "when the server offers PIPELINING) or 'off' (one command at a time)"
            )
    smtp_host = get("BG_OPS_SMTP_HOST")
    smtp_username = get("BG_OPS_SMTP_USERNAME")
    if mail_backend == "smtp":
        if not smtp_host:
            problems.append(
                "BG_OPS_SMTP_HOST is not set but BG_OPS_MAIL_BACKEND=smtp: set it to the mail "
                "server's host name, or use BG_OPS_MAIL_BACKEND=outbox"
            )
        if smtp_username and get("BG_OPS_SMTP_PASSWORD") is None:
            problems.append(
                "BG_OPS_SMTP_PASSWORD is not set but BG_OPS_SMTP_USERNAME is: set the password, "
                "or unset the username for a server without login"
            )

    mail_from = get("BG_OPS_MAIL_FROM") or "bg_ops <no-reply@localhost>"
    if not is_valid_address(parseaddr(mail_from)[1]):
        problems.append(
            f"BG_OPS_MAIL_FROM={mail_from!r} is not an address: use 'Name <sender@example.com>' "
            "or 'sender@example.com'"
        )
    admin_emails: list[str] = []
    for item in (get("BG_OPS_ADMIN_EMAILS") or "").split(","):
        item = item.strip()
        if not item:
            continue
        if is_valid_address(item):
            admin_emails.append(item)
        else:
            problems.append(
                f"BG_OPS_ADMIN_EMAILS has {item!r}, which is not an address: give a "
                "comma-separated list such as 'ops@example.com,cto@example.com'"
            )

    # -- cloud storage ------------------------------------------------------------------
    storage_backend = (get("BG_OPS_STORAGE_BACKEND") or "local").lower()
    if storage_backend not in STORAGE_BACKENDS:
        problems.append(
            f"BG_OPS_STORAGE_BACKEND={get('BG_OPS_STORAGE_BACKEND')!r} is not a storage backend: "
            "use 'local' (default, a folder in BG_OPS_STORAGE_DIR) or 'dropbox'"
        )
    storage_dir = Path(get("BG_OPS_STORAGE_DIR") or home / "cloud").expanduser()
    dropbox_root = get("BG_OPS_DROPBOX_ROOT") or "/bg_ops"
    if not dropbox_root.startswith("/") or "//" in dropbox_root or "\\" in dropbox_root:
        problems.append(
            f"BG_OPS_DROPBOX_ROOT={dropbox_root!r} is not a Dropbox folder path: use a path "
            "that starts with '/', such as '/bg_ops'"
        )
    dropbox_root = dropbox_root.rstrip("/")
    app_key = get("DROPBOX_APP_KEY")
    if storage_backend == "dropbox":
        refresh = get("DROPBOX_REFRESH_TOKEN")
        access = get("DROPBOX_ACCESS_TOKEN")
        if not refresh and not access:
            problems.append(
                "DROPBOX_REFRESH_TOKEN is not set but BG_OPS_STORAGE_BACKEND=dropbox: set "
                "DROPBOX_REFRESH_TOKEN with DROPBOX_APP_KEY (and DROPBOX_APP_SECRET), or "
                "DROPBOX_ACCESS_TOKEN for a short-lived token"
            )
        elif refresh and not app_key:
            problems.append(
                "DROPBOX_APP_KEY is not set but DROPBOX_REFRESH_TOKEN is: a refresh token needs "
                "the app key of the Dropbox app it was issued for"
            )

    # -- payment intake (B5) ---------------------------------------------------------------
    # The signing secrets are only checked for consistency here: `bg-ops intake serve`
    # refuses to start without the current one, the code location does not need them.
    if get("BG_OPS_PAYMENT_SIGNING_SECRET_NEXT") and not get("BG_OPS_PAYMENT_SIGNING_SECRET"):
        problems.append(
            "BG_OPS_PAYMENT_SIGNING_SECRET is not set but BG_OPS_PAYMENT_SIGNING_SECRET_NEXT is: set "
            "the current signing secret too (the next one is only accepted beside it while rotating)"
        )
    intake_max_body_bytes = DEFAULT_INTAKE_MAX_BODY_BYTES
    if get("BG_OPS_INTAKE_MAX_BODY_BYTES") is not None:
        raw = get("BG_OPS_INTAKE_MAX_BODY_BYTES")
        low, high = INTAKE_BODY_LIMITS
        if raw.isdigit() and low <= int(raw) <= high:
            intake_max_body_bytes = int(raw)
        else:
            problems.append(
                f"BG_OPS_INTAKE_MAX_BODY_BYTES={raw!r} is not valid: use a size in bytes between "
                f"{low} and {high}, e.g. 1048576 (1 MiB, the default)"
            )

    # -- alerts (O1) ------------------------------------------------------------------------
    ui_base_url = (get("BG_OPS_UI_BASE_URL") or DEFAULT_UI_BASE_URL).rstrip("/")
    if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", ui_base_url):
        problems.append(
            f"BG_OPS_UI_BASE_URL={get('BG_OPS_UI_BASE_URL')!r} is not a web address: use the address "
            "operators open the Dagster UI at, such as 'https://dagster.example.com' (alert mails "
            "link to <address>/runs/<run id>)"
        )

    # -- maintenance: retention (O4) and database backups (O5) ------------------------------
    def whole_number(name: str, default: int, low: int, high: int, unit: str, example: str) -> int:
        raw = get(name)
        if raw is None:
            return default
        if raw.isdigit() and low <= int(raw) <= high:
            return int(raw)
        problems.append(f"{name}={raw!r} is not valid: use a whole number of {unit} between {low} and {high}, "
                        f"e.g. {example}")
        return default

    retention_days = whole_number("BG_OPS_RETENTION_DAYS", 90, 1, 3650, "days", "90 (the default, seed 003 BR-2)")
    temp_state_retention_hours = whole_number("BG_OPS_TEMP_STATE_RETENTION_HOURS", 24, 1, 24 * 365, "hours",
                                              "24 (the default)")
    notification_retention_days = whole_number("BG_OPS_NOTIFICATION_RETENTION_DAYS", 90, 1, 3650, "days",
                                               "90 (the default)")
    reminder_log_retention_days = whole_number("BG_OPS_REMINDER_LOG_RETENTION_DAYS", 400, 1, 3650, "days",
                                               "400 (the default: over a year, so yearly reminders never repeat)")
    db_backup_keep_daily = whole_number("BG_OPS_DB_BACKUP_KEEP_DAILY", 7, 1, 366, "backups", "7 (the default)")
    db_backup_keep_weekly = whole_number("BG_OPS_DB_BACKUP_KEEP_WEEKLY", 4, 0, 520, "backups", "4 (the default)")
    db_backup_cron = get("BG_OPS_DB_BACKUP_CRON") or "30 2 * * *"
    from bg_ops.defs.maintenance.cron import CronError, parse_cron

    try:
        parse_cron(db_backup_cron)
    except CronError as exc:
        problems.append(f"BG_OPS_DB_BACKUP_CRON={db_backup_cron!r} is not a cron expression ({exc}): use five "
                        "fields, minute hour day month weekday, in UTC, e.g. '30 2 * * *' (02:30 every night)")
    db_backup_folder = (get("BG_OPS_DB_BACKUP_FOLDER") or "/_system/db_backups").rstrip("/")
    if not db_backup_folder.startswith("/") or "//" in db_backup_folder or "\\" in db_backup_folder \
            or db_backup_folder in ("", "/"):
        problems.append(f"BG_OPS_DB_BACKUP_FOLDER={get('BG_OPS_DB_BACKUP_FOLDER')!r} is not a cloud folder: use a "
                        "path under the storage root that starts with '/', such as '/_system/db_backups'")

    if problems:
        raise ConfigError(problems)

    secrets = {name: get(name) for name in SECRET_VARS if get(name) is not None}
    return Settings(
        database_url=database_url,
        files_root=files_root,
        mail_backend=mail_backend,
        outbox_dir=outbox_dir,
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_security=smtp_security,
        smtp_username=smtp_username,
        smtp_timeout=smtp_timeout,
        smtp_pipelining=smtp_pipelining,
        mail_from=mail_from,
        admin_emails=tuple(admin_emails),
        storage_backend=storage_backend,
        storage_dir=storage_dir,
        dropbox_root=dropbox_root,
        dropbox_app_key=app_key,
        home=home,
        intake_max_body_bytes=intake_max_body_bytes,
        ui_base_url=ui_base_url,
        retention_days=retention_days,
        temp_state_retention_hours=temp_state_retention_hours,
        notification_retention_days=notification_retention_days,
        reminder_log_retention_days=reminder_log_retention_days,
        db_backup_cron=db_backup_cron,
        db_backup_keep_daily=db_backup_keep_daily,
        db_backup_keep_weekly=db_backup_keep_weekly,
        db_backup_folder=db_backup_folder,
        secrets_set=frozenset(secrets),
        _secrets=secrets,
    )
