"""The configuration contract: defaults, and one clear line per bad value naming the variable."""

from pathlib import Path

import pytest

from bg_ops.settings import ConfigError, load_settings


def test_embedded_defaults_live_under_dot_bg_ops(tmp_path):
    s = load_settings({}, cwd=tmp_path)
    home = tmp_path / ".bg_ops"
    assert s.database_url == f"sqlite:///{home / 'bg_ops.db'}"
    assert s.files_root == home / "files"
    assert (s.mail_backend, s.outbox_dir) == ("outbox", home / "outbox")
    assert (s.storage_backend, s.storage_dir) == ("local", home / "cloud")
    assert s.dropbox_root == "/bg_ops"
    assert s.smtp_security == "starttls" and s.smtp_port == 587
    assert s.admin_emails == ()


def test_postgres_urls_get_the_explicit_psycopg2_driver(tmp_path):
    s = load_settings({"BG_OPS_DATABASE_URL": "postgresql://bg:pw@db:5432/agency"}, cwd=tmp_path)
    assert s.database_url == "postgresql+psycopg2://bg:pw@db:5432/agency"
    s = load_settings({"BG_OPS_DATABASE_URL": "postgres://bg@db/agency"}, cwd=tmp_path)
    assert s.database_url.startswith("postgresql+psycopg2://")


def test_smtp_port_follows_security_unless_set(tmp_path):
    env = {"BG_OPS_MAIL_BACKEND": "smtp", "BG_OPS_SMTP_HOST": "mail.example.com"}
    assert load_settings({**env, "BG_OPS_SMTP_SECURITY": "ssl"}, cwd=tmp_path).smtp_port == 465
    assert load_settings({**env, "BG_OPS_SMTP_SECURITY": "none"}, cwd=tmp_path).smtp_port == 25
    s = load_settings({**env, "BG_OPS_SMTP_PORT": "2525", "BG_OPS_SMTP_TIMEOUT": "7.5"}, cwd=tmp_path)
    assert (s.smtp_port, s.smtp_timeout) == (2525, 7.5)


def test_smtp_pipelining_is_on_unless_turned_off_and_reaches_the_resource(tmp_path):
    from bg_ops.resources.factory import mail_resource

    env = {"BG_OPS_MAIL_BACKEND": "smtp", "BG_OPS_SMTP_HOST": "mail.example.com"}
    assert load_settings(env, cwd=tmp_path).smtp_pipelining is True
    assert mail_resource(load_settings(env, cwd=tmp_path)).pipelining is True
    off = load_settings({**env, "BG_OPS_SMTP_PIPELINING": "Off"}, cwd=tmp_path)
    assert off.smtp_pipelining is False
    assert mail_resource(off).pipelining is False


@pytest.mark.parametrize(
    "env, variable, fix",
    [
        ({"BG_OPS_MAIL_BACKEND": "sendgrid"}, "BG_OPS_MAIL_BACKEND", "'outbox'"),
        ({"BG_OPS_STORAGE_BACKEND": "s3"}, "BG_OPS_STORAGE_BACKEND", "'dropbox'"),
        ({"BG_OPS_MAIL_BACKEND": "smtp"}, "BG_OPS_SMTP_HOST", "host name"),
        ({"BG_OPS_SMTP_PORT": "70000"}, "BG_OPS_SMTP_PORT", "1-65535"),
        ({"BG_OPS_SMTP_PORT": "smtp"}, "BG_OPS_SMTP_PORT", "1-65535"),
        ({"BG_OPS_SMTP_SECURITY": "tls"}, "BG_OPS_SMTP_SECURITY", "'starttls'"),
        ({"BG_OPS_SMTP_TIMEOUT": "-1"}, "BG_OPS_SMTP_TIMEOUT", "seconds"),
        ({"BG_OPS_SMTP_PIPELINING": "yes"}, "BG_OPS_SMTP_PIPELINING", "'off'"),
        (
            {"BG_OPS_MAIL_BACKEND": "smtp", "BG_OPS_SMTP_HOST": "h", "BG_OPS_SMTP_USERNAME": "u"},
            "BG_OPS_SMTP_PASSWORD",
            "set the password",
        ),
        ({"BG_OPS_MAIL_FROM": "not an address"}, "BG_OPS_MAIL_FROM", "sender@example.com"),
        ({"BG_OPS_ADMIN_EMAILS": "ops@example.com, nope"}, "BG_OPS_ADMIN_EMAILS", "comma-separated"),
        ({"BG_OPS_STORAGE_BACKEND": "dropbox"}, "DROPBOX_REFRESH_TOKEN", "DROPBOX_APP_KEY"),
        (
            {"BG_OPS_STORAGE_BACKEND": "dropbox", "DROPBOX_REFRESH_TOKEN": "r"},
            "DROPBOX_APP_KEY",
            "app key",
        ),
        ({"BG_OPS_DROPBOX_ROOT": "bg_ops"}, "BG_OPS_DROPBOX_ROOT", "starts with '/'"),
        ({"BG_OPS_DATABASE_URL": "mysql://u@h/db"}, "BG_OPS_DATABASE_URL", "postgresql+psycopg2"),
        ({"BG_OPS_DATABASE_URL": "postgresql+psycopg://u@h/db"}, "BG_OPS_DATABASE_URL", "postgresql+psycopg2"),
        ({"BG_OPS_DATABASE_URL": "not a url"}, "BG_OPS_DATABASE_URL", "sqlite:///"),
        ({"BG_OPS_DATABASE_URL": "sqlite://"}, "BG_OPS_DATABASE_URL", "in-memory"),
        ({"BG_OPS_INTAKE_MAX_BODY_BYTES": "1MB"}, "BG_OPS_INTAKE_MAX_BODY_BYTES", "size in bytes"),
        ({"BG_OPS_INTAKE_MAX_BODY_BYTES": "0"}, "BG_OPS_INTAKE_MAX_BODY_BYTES", "1048576"),
        ({"BG_OPS_INTAKE_MAX_BODY_BYTES": str(2**40)}, "BG_OPS_INTAKE_MAX_BODY_BYTES", "between 1024"),
        (
            {"BG_OPS_PAYMENT_SIGNING_SECRET_NEXT": "whsec_next"},
            "BG_OPS_PAYMENT_SIGNING_SECRET",
            "set the current signing secret",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_the_fix(tmp_path, env, variable, fix):
    with pytest.raises(ConfigError) as err:
        load_settings(env, cwd=tmp_path)
    assert len(err.value.problems) == 1, err.value.problems
    line = err.value.problems[0]
    assert "\n" not in line
    assert variable in line and fix in line


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings({"BG_OPS_MAIL_BACKEND": "x", "BG_OPS_STORAGE_BACKEND": "dropbox"}, cwd=tmp_path)
    text = str(err.value)
    assert "BG_OPS_MAIL_BACKEND" in text and "DROPBOX_REFRESH_TOKEN" in text
    assert len(err.value.problems) == 2


def test_missing_files_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match="BG_OPS_FILES_ROOT"):
        load_settings({"BG_OPS_FILES_ROOT": str(tmp_path / "nope")}, cwd=tmp_path)
    assert load_settings({"BG_OPS_FILES_ROOT": str(tmp_path)}, cwd=tmp_path).files_root == Path(tmp_path)


def test_secrets_stay_out_of_repr(tmp_path):
    env = {
        "BG_OPS_MAIL_BACKEND": "smtp",
        "BG_OPS_SMTP_HOST": "mail.example.com",
        "BG_OPS_SMTP_USERNAME": "bg",
        "BG_OPS_SMTP_PASSWORD": "hunter2-smtp",
        "BG_OPS_STORAGE_BACKEND": "dropbox",
        "DROPBOX_APP_KEY": "key",
        "DROPBOX_REFRESH_TOKEN": "refresh-secret-token",
    }
    s = load_settings(env, cwd=tmp_path)
    assert "hunter2-smtp" not in repr(s) and "refresh-secret-token" not in repr(s)
    assert s.secrets_set == {"BG_OPS_SMTP_PASSWORD", "DROPBOX_REFRESH_TOKEN"}
    assert s.secret("BG_OPS_SMTP_PASSWORD") == "hunter2-smtp"


def test_admin_emails_are_split_and_trimmed(tmp_path):
    s = load_settings({"BG_OPS_ADMIN_EMAILS": " ops@example.com ,cto@example.com,"}, cwd=tmp_path)
    assert s.admin_emails == ("ops@example.com", "cto@example.com")


def test_payment_intake_defaults_and_limits(tmp_path):
    s = load_settings({}, cwd=tmp_path)
    assert s.intake_max_body_bytes == 1024 * 1024
    assert s.secret("BG_OPS_PAYMENT_SIGNING_SECRET") is None and not s.secrets_set
    s = load_settings({"BG_OPS_INTAKE_MAX_BODY_BYTES": " 65536 "}, cwd=tmp_path)
    assert s.intake_max_body_bytes == 65536


def test_payment_signing_secrets_are_secrets(tmp_path):
    env = {"BG_OPS_PAYMENT_SIGNING_SECRET": "whsec_current-do-not-print",
           "BG_OPS_PAYMENT_SIGNING_SECRET_NEXT": "whsec_next-do-not-print"}
    s = load_settings(env, cwd=tmp_path)
    assert "do-not-print" not in repr(s)
    assert s.secrets_set == {"BG_OPS_PAYMENT_SIGNING_SECRET", "BG_OPS_PAYMENT_SIGNING_SECRET_NEXT"}
    assert s.secret("BG_OPS_PAYMENT_SIGNING_SECRET") == "whsec_current-do-not-print"
    assert s.secret("BG_OPS_PAYMENT_SIGNING_SECRET_NEXT") == "whsec_next-do-not-print"
    # The current secret alone is the normal case between rotations.
    only = load_settings({"BG_OPS_PAYMENT_SIGNING_SECRET": "whsec_current"}, cwd=tmp_path)
    assert only.secrets_set == {"BG_OPS_PAYMENT_SIGNING_SECRET"}


def test_payment_variables_are_part_of_the_contract():
    from bg_ops.settings import ENV_VARS, SECRET_VARS

    for name in ("BG_OPS_PAYMENT_SIGNING_SECRET", "BG_OPS_PAYMENT_SIGNING_SECRET_NEXT"):
        assert name in ENV_VARS and name in SECRET_VARS
    assert "BG_OPS_INTAKE_MAX_BODY_BYTES" in ENV_VARS and "BG_OPS_INTAKE_MAX_BODY_BYTES" not in SECRET_VARS
