"""``bg-ops doctor``: checks that everything bg_ops needs is configured and reachable.

Every check runs, even after one fails, so an operator sees the whole list at once: the
configuration, the database (reachable, bg_ops tables at the latest migration, the platform's
tables present), mail (an SMTP session up to QUIT, never a message; or a writable outbox),
cloud storage (one authenticated Dropbox call; or a writable folder), the files root and
Dagster's instance file. A configuration problem fails the checks of its area only; the other
areas are still checked with their own (valid) settings.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from bg_ops.cli.main import EXIT_CONFIG, EXIT_ERROR, CliError, emit, json_option
from bg_ops.settings import ENV_VARS, ConfigError, Settings, load_settings

# Which check a variable belongs to: a bad value fails that check and leaves the others alone.
AREAS: dict[str, tuple[str, ...]] = {
    "database": ("BG_OPS_DATABASE_URL",),
    "files root": ("BG_OPS_FILES_ROOT",),
    "mail": ("BG_OPS_MAIL_BACKEND", "BG_OPS_OUTBOX_DIR", "BG_OPS_SMTP_HOST", "BG_OPS_SMTP_PORT",
             "BG_OPS_SMTP_SECURITY", "BG_OPS_SMTP_USERNAME", "BG_OPS_SMTP_PASSWORD",
             "BG_OPS_SMTP_TIMEOUT", "BG_OPS_SMTP_PIPELINING", "BG_OPS_MAIL_FROM", "BG_OPS_ADMIN_EMAILS"),
    "cloud storage": ("BG_OPS_STORAGE_BACKEND", "BG_OPS_STORAGE_DIR", "BG_OPS_DROPBOX_ROOT",
                      "DROPBOX_APP_KEY", "DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN",
                      "DROPBOX_ACCESS_TOKEN"),
    "payment intake": ("BG_OPS_PAYMENT_SIGNING_SECRET", "BG_OPS_PAYMENT_SIGNING_SECRET_NEXT",
                       "BG_OPS_INTAKE_MAX_BODY_BYTES"),
}
AREA_OF = {var: area for area, names in AREAS.items() for var in names}
CHECK_ORDER = ("configuration", "database", "files root", "mail", "cloud storage", "dagster")
DROPBOX_CHECK_TIMEOUT = 15.0  # seconds: the doctor answers quickly, even when Dropbox does not

_VAR_AT_START = re.compile(r"^([A-Z][A-Z0-9_]+)")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        text = self.detail if self.ok or not self.fix else f"{self.detail}: {self.fix}"
        return f"{status}  {self.name:<14} {text}"


class _Unsalvageable(Exception):
    pass


def _settings_by_area(environ: Mapping[str, str]) -> tuple[Settings, dict[str, list[str]]]:
    """Settings for the areas whose variables are valid, and the problems of the others.

    A broken area's variables are dropped (back to the embedded default) so the other areas
    can still be checked; the broken area reports its problems instead of being checked.
    """
    try:
        return load_settings(environ), {}
    except ConfigError as exc:
        broken: dict[str, list[str]] = {}
        for problem in exc.problems:
            match = _VAR_AT_START.match(problem)
            if not match or match.group(1) not in ENV_VARS:
                raise _Unsalvageable(str(exc)) from None
            broken.setdefault(AREA_OF.get(match.group(1), "configuration"), []).append(problem)
    drop = {var for area in broken for var in AREAS.get(area, ())}
    try:
        return load_settings({k: v for k, v in environ.items() if k not in drop}), broken
    except ConfigError as exc:
        raise _Unsalvageable(str(exc)) from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def _writable(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".bg-ops-doctor-"):
        pass


def check_database(settings: Settings) -> Check:
    import sqlalchemy as sa

    from bg_ops.db import migrate
    from bg_ops.db.app_schema import AppBase
    from bg_ops.db.engine import check_database as reach, get_engine

    try:
        shown = reach(settings.database_url)
    except ConfigError as exc:
        return Check("database", False, str(exc))
    engine = get_engine(settings.database_url)
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision()
        tables = set(sa.inspect(engine).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        return Check("database", False, f"{shown}: cannot read the schema ({_reason(exc)})",
                     "check the database user's permissions")
    if current != head:
        return Check("database", False, f"{shown}: bg_ops tables at {current or 'nothing'}, latest is {head}",
                     "run 'bg-ops db upgrade'")
    missing = [t.name for t in AppBase.metadata.sorted_tables if t.name not in tables]
    if missing:
        return Check("database", False,
                     f"{shown}: {len(missing)} platform table(s) missing ({', '.join(missing[:5])}"
                     + (", …" if len(missing) > 5 else "") + ")",
                     "point BG_OPS_DATABASE_URL at the platform's database (for a demo: "
                     "'bg-ops db init-app-schema' or 'bg-ops demo seed')")
    return Check("database", True, f"{shown} reachable, bg_ops tables at {head} (latest)")


def check_files_root(settings: Settings) -> Check:
    root = Path(settings.files_root)
    if not root.is_dir():
        return Check("files root", False, f"{root} does not exist",
                     "set BG_OPS_FILES_ROOT to the folder holding the platform's files "
                     "(for a demo: 'bg-ops demo seed' creates it)")
    if not os.access(root, os.R_OK | os.X_OK):
        return Check("files root", False, f"{root} is not readable", "give this user read access to it")
    return Check("files root", True, f"{root} readable")


def _smtp_fix(message: str, settings: Settings) -> str:
    lowered = message.lower()
    if "login refused" in lowered:
        return "fix BG_OPS_SMTP_USERNAME / BG_OPS_SMTP_PASSWORD"
    if "tls" in lowered or "starttls" in lowered or "ssl" in lowered:
        return ("check BG_OPS_SMTP_SECURITY: 'starttls' (usually port 587), 'ssl' (465) or 'none' (25), "
                "and that the server's certificate is trusted")
    if "timed out" in lowered:
        return ("check BG_OPS_SMTP_HOST and BG_OPS_SMTP_PORT and the firewall, or raise "
                f"BG_OPS_SMTP_TIMEOUT (now {settings.smtp_timeout:g} s)")
    return "check BG_OPS_SMTP_HOST and BG_OPS_SMTP_PORT, and that the mail server is running"


def check_mail(settings: Settings) -> Check:
    from bg_ops.resources.factory import plain_resources
    from bg_ops.resources.mail import MailError

    if settings.mail_backend != "smtp":
        try:
            _writable(Path(settings.outbox_dir))
        except OSError as exc:
            return Check("mail", False, f"outbox {settings.outbox_dir} is not writable ({exc.strerror or exc})",
                         "fix BG_OPS_OUTBOX_DIR or the folder's permissions")
        return Check("mail", True, f"outbox backend: {settings.outbox_dir} writable")
    mail = plain_resources(settings)["mail"]
    try:
        described = mail.check_connection()  # connect, EHLO, STARTTLS, login, QUIT: no mail sent
    except MailError as exc:
        message = _reason(exc)
        return Check("mail", False, message, _smtp_fix(message, settings))
    return Check("mail", True, f"{described}: connected and said QUIT (no mail sent)")


def _storage_fix(exc: BaseException) -> str:
    from bg_ops.resources.storage import StorageAuthError

    if isinstance(exc, StorageAuthError):
        return ("set DROPBOX_REFRESH_TOKEN (with DROPBOX_APP_KEY and DROPBOX_APP_SECRET) or "
                "DROPBOX_ACCESS_TOKEN to a valid token for the bg_ops Dropbox app")
    if "TLS" in str(exc):
        return "the HTTPS certificate is not trusted: check REQUESTS_CA_BUNDLE and the proxy"
    return "check the network route to Dropbox (proxy, firewall) and BG_OPS_DROPBOX_ROOT"


def check_storage(settings: Settings) -> Check:
    from bg_ops.resources.factory import plain_resources
    from bg_ops.resources.storage import StorageError

    storage = plain_resources(settings)["storage"]
    if settings.storage_backend == "dropbox":
        storage = storage.model_copy(update={"timeout_seconds": DROPBOX_CHECK_TIMEOUT, "max_rate_limit_retries": 0})
        storage.set_sleep(lambda _seconds: None)  # no waiting between the transient retries
    try:
        described = storage.check_connection()
    except StorageError as exc:
        return Check("cloud storage", False, _reason(exc), _storage_fix(exc))
    verb = "authenticated" if settings.storage_backend == "dropbox" else "writable"
    return Check("cloud storage", True, f"{described} {verb}")


def check_dagster(environ: Mapping[str, str], cwd: Path) -> Check:
    """The instance file ``dagster dev`` / the daemon will read, if there is one: does it parse?"""
    import yaml

    home = environ.get("DAGSTER_HOME")
    path = Path(home) / "dagster.yaml" if home else cwd / "dagster.yaml"
    if not path.exists():
        where = f"DAGSTER_HOME={home}" if home else str(cwd)
        return Check("dagster", True, f"no dagster.yaml in {where}: Dagster's defaults apply")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return Check("dagster", False, f"{path} does not parse ({_reason(exc)})", "fix the YAML syntax")
    if data is not None and not isinstance(data, dict):
        return Check("dagster", False, f"{path} is not a mapping of settings",
                     "see deploy/dagster.yaml for the expected shape")
    sections = ", ".join(sorted(data or {})) or "no settings"
    return Check("dagster", True, f"{path} parses ({sections})")


def run_checks(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[Check]:
    """Every check, in order; raises ``CliError`` (exit 2) only when no check can run."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    try:
        settings, broken = _settings_by_area(environ)
    except _Unsalvageable as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    checks: list[Check] = []
    for area, problems in broken.items():
        checks += [Check(area if area in CHECK_ORDER else "configuration", False, p) for p in problems]
    if not broken:
        checks.append(Check("configuration", True,
                            f"valid (mail: {settings.mail_backend}, storage: {settings.storage_backend})"))
    runners: dict[str, Callable[[], Check]] = {
        "database": lambda: check_database(settings),
        "files root": lambda: check_files_root(settings),
        "mail": lambda: check_mail(settings),
        "cloud storage": lambda: check_storage(settings),
        "dagster": lambda: check_dagster(environ, cwd),
    }
    for name, runner in runners.items():
        if name in broken:
            continue
        try:
            checks.append(runner())
        except Exception as exc:  # noqa: BLE001 - one check's surprise must not hide the others
            checks.append(Check(name, False, f"{exc.__class__.__name__}: {_reason(exc)}",
                                "run the command this check stands for with --debug for details"))
    checks.sort(key=lambda c: CHECK_ORDER.index(c.name) if c.name in CHECK_ORDER else len(CHECK_ORDER))
    return checks


@click.command("doctor")
@json_option
def doctor(as_json: bool) -> None:
    """Check configuration, database, mail, cloud storage, files and Dagster; list every problem.

    Runs every check even when one fails and prints one line per check; a failed line names
    what is wrong and how to fix it. Connects to the SMTP server without sending anything
    (EHLO, STARTTLS, login, QUIT) and makes one authenticated Dropbox call. Exit 0 when all
    pass, 1 when any fails, 2 when the configuration is too broken to check anything.

    \b
    Examples:
      bg-ops doctor
      BG_OPS_MAIL_BACKEND=smtp BG_OPS_SMTP_HOST=mail.example.com bg-ops doctor
      bg-ops doctor --json | jq '.checks[] | select(.ok | not)'
    """
    checks = run_checks()
    failed = [c for c in checks if not c.ok]
    data = {"ok": not failed, "checks": [asdict(c) for c in checks]}
    lines = [c.line() for c in checks]
    emit(data, as_json, "\n".join(lines if failed else [*lines, "all checks passed"]))
    if failed:
        names = ", ".join(dict.fromkeys(c.name for c in failed))
        raise CliError(f"{len(failed)} problem(s) found ({names}): fix the FAIL lines above", EXIT_ERROR)
