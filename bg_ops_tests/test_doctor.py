"""``bg-ops doctor`` names every problem with its fix, against real servers (issue 8, P2, U2).

The SMTP server is aiosmtpd on loopback, Dropbox is the loopback HTTPS test server reached
through the real SDK: the doctor trusts its certificate through ``REQUESTS_CA_BUNDLE``, the
way an operator behind a TLS-inspecting proxy would configure it.
"""

import json

import pytest

from bg_ops.cli.main import main
from bg_ops_tests.support.postgres_server import free_port


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ready(tmp_path, monkeypatch, capsys, dropbox_fake):
    """A migrated database with the platform tables, a files root, Dropbox trusted."""
    monkeypatch.chdir(tmp_path)
    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv("BG_OPS_DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("BG_OPS_FILES_ROOT", str(files))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", dropbox_fake.cert_path)
    assert run(capsys, "db", "upgrade")[0] == 0
    assert run(capsys, "db", "init-app-schema")[0] == 0
    return tmp_path


def use_smtp(monkeypatch, port: int) -> None:
    monkeypatch.setenv("BG_OPS_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("BG_OPS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("BG_OPS_SMTP_PORT", str(port))
    monkeypatch.setenv("BG_OPS_SMTP_SECURITY", "none")
    monkeypatch.setenv("BG_OPS_SMTP_TIMEOUT", "5")


def use_dropbox(monkeypatch, dropbox_fake, refresh_token: str | None) -> None:
    monkeypatch.setenv("BG_OPS_STORAGE_BACKEND", "dropbox")
    monkeypatch.setenv("DROPBOX_APP_KEY", dropbox_fake.app_key)
    monkeypatch.setenv("DROPBOX_APP_SECRET", dropbox_fake.app_secret)
    if refresh_token is not None:
        monkeypatch.setenv("DROPBOX_REFRESH_TOKEN", refresh_token)


def by_name(out: str) -> dict:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def test_everything_right_passes_and_sends_no_mail(ready, monkeypatch, capsys, smtp_server, dropbox_fake):
    (ready / "dagster.yaml").write_text("run_retries:\n  enabled: true\n")
    use_smtp(monkeypatch, smtp_server.port)
    use_dropbox(monkeypatch, dropbox_fake, dropbox_fake.refresh_token)
    code, out, err = run(capsys, "doctor")
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["ok"] * 6 and lines[-1] == "all checks passed"
    assert smtp_server.connections == 1 and smtp_server.messages == []  # QUIT, never DATA
    # One authenticated call reached the Dropbox server with a token it issued.
    calls = [r for r in dropbox_fake.requests if r.endpoint == "users/get_current_account"]
    assert len(calls) == 1 and calls[0].status == 200 and calls[0].token in dropbox_fake.issued_tokens
    assert dropbox_fake.files == {}  # the doctor writes nothing to the cloud

    code, out, _ = run(capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert set(by_name(out)) == {"configuration", "database", "files root", "mail", "cloud storage", "dagster"}


def test_wrong_smtp_port_and_invalid_dropbox_token_are_both_named(ready, monkeypatch, capsys, dropbox_fake):
    closed = free_port()
    use_smtp(monkeypatch, closed)
    use_dropbox(monkeypatch, dropbox_fake, "not-a-token-dropbox-issued")
    code, out, err = run(capsys, "doctor")
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2, out
    mail, storage = failed
    assert f"SMTP 127.0.0.1:{closed}" in mail and "Connection refused" in mail
    assert "BG_OPS_SMTP_PORT" in mail  # the fix names the variable
    assert "cloud storage" in storage and "Dropbox authentication failed" in storage
    assert "DROPBOX_REFRESH_TOKEN" in storage
    assert "not-a-token-dropbox-issued" not in out + err  # secrets never printed
    assert err.strip() == "error: 2 problem(s) found (mail, cloud storage): fix the FAIL lines above"
    # The other checks still ran and passed.
    code, out, _ = run(capsys, "doctor", "--json")
    checks = by_name(out)
    assert code == 1 and json.loads(out)["ok"] is False
    assert {n for n, c in checks.items() if not c["ok"]} == {"mail", "cloud storage"}
    assert checks["database"]["ok"] and checks["files root"]["ok"] and checks["configuration"]["ok"]
    assert "DROPBOX_REFRESH_TOKEN" in checks["cloud storage"]["fix"]


def test_missing_dropbox_token_is_named_and_smtp_is_still_checked(ready, monkeypatch, capsys, dropbox_fake):
    closed = free_port()
    use_smtp(monkeypatch, closed)
    use_dropbox(monkeypatch, dropbox_fake, None)
    code, out, err = run(capsys, "doctor", "--json")
    assert code == 1, err
    checks = by_name(out)
    assert {n for n, c in checks.items() if not c["ok"]} == {"mail", "cloud storage"}
    assert checks["cloud storage"]["detail"].startswith("DROPBOX_REFRESH_TOKEN is not set but BG_OPS_STORAGE_BACKEND=dropbox")
    assert f"127.0.0.1:{closed}" in checks["mail"]["detail"]
    assert checks["database"]["ok"] and checks["files root"]["ok"]
    assert dropbox_fake.requests == []  # nothing to authenticate with: no call made


def test_unmigrated_database_missing_files_root_and_bad_instance_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    (tmp_path / "dagster.yaml").write_text("run_retries: [unclosed\n")
    code, out, _ = run(capsys, "doctor", "--json")
    checks = by_name(out)
    assert code == 1
    assert {n for n, c in checks.items() if not c["ok"]} == {"database", "files root", "dagster"}
    assert checks["database"]["fix"] == "run 'bg-ops db upgrade'"
    assert "BG_OPS_FILES_ROOT" in checks["files root"]["fix"]
    assert "does not parse" in checks["dagster"]["detail"]
    # Embedded mail and storage folders are fine.
    assert checks["mail"]["ok"] and checks["cloud storage"]["ok"]


def test_bad_values_in_two_areas_each_get_a_line_and_the_rest_is_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_MAIL_BACKEND", "pigeon")
    monkeypatch.setenv("BG_OPS_FILES_ROOT", str(tmp_path / "nowhere"))
    code, out, err = run(capsys, "doctor")
    assert code == 1 and "Traceback" not in err
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("BG_OPS_MAIL_BACKEND='pigeon' is not a mail backend" in line for line in failed)
    assert any("BG_OPS_FILES_ROOT=" in line and "is not an existing folder" in line for line in failed)
    assert any(line.startswith("ok") and "cloud storage" in line for line in out.splitlines())
