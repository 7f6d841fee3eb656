"""The bg-ops CLI: config first, one clear line on errors, --json is one document (E8, U2, P9)."""

import json
import subprocess
import sys

import pytest

from bg_ops.cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_db_upgrade_twice_second_is_a_no_op(db_url, monkeypatch, capsys):
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    code, out, _ = run(capsys, "db", "upgrade", "--json")
    first = json.loads(out)
    assert code == 0 and first["changed"] is True and first["before"] is None
    code, out, _ = run(capsys, "db", "upgrade", "--json")
    second = json.loads(out)
    assert code == 0 and second == {"before": first["after"], "after": first["after"], "changed": False}
    code, out, _ = run(capsys, "db", "upgrade")
    assert "nothing to do" in out
    code, out, _ = run(capsys, "db", "current", "--json")
    assert json.loads(out)["up_to_date"] is True


def test_bad_configuration_is_one_line_per_variable_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_MAIL_BACKEND", "pigeon")
    code, out, err = run(capsys, "db", "upgrade", "--json")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: BG_OPS_MAIL_BACKEND='pigeon'")
    assert "Traceback" not in err
    assert not (tmp_path / ".bg_ops").exists()  # nothing was done before validation


def test_unreachable_database_names_the_variable_and_hides_the_password(monkeypatch, capsys):
    from bg_ops_tests.support.postgres_server import free_port

    monkeypatch.setenv("BG_OPS_DATABASE_URL", f"postgresql://bg:topsecret@127.0.0.1:{free_port()}/agency")
    code, out, err = run(capsys, "db", "upgrade")
    assert code == 2 and out == ""
    assert err.startswith("error: BG_OPS_DATABASE_URL: cannot connect to postgresql+psycopg2://bg:***@127.0.0.1")
    assert "topsecret" not in err and len(err.strip().splitlines()) == 1


def test_config_show_json_hides_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("BG_OPS_SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("BG_OPS_SMTP_USERNAME", "bg")
    monkeypatch.setenv("BG_OPS_SMTP_PASSWORD", "pw-do-not-print")
    code, out, err = run(capsys, "config", "show", "--json")
    data = json.loads(out)
    assert code == 0 and data["smtp"]["password_set"] is True and data["mail_backend"] == "smtp"
    assert "pw-do-not-print" not in out + err


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import bg_ops.db.migrate as migrate

    def boom(engine, revision="head"):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(migrate, "upgrade", boom)
    code, out, err = run(capsys, "db", "upgrade")
    assert code == 1 and err.strip() == "error: RuntimeError: disk on fire (run with --debug for the traceback)"
    with pytest.raises(RuntimeError):
        main(["--debug", "db", "upgrade"])


def test_help_reads_like_a_manual(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("config", "db", "demo", "tenants"):
        assert command in out
    code, out, _ = run(capsys, "demo", "seed", "--help")
    assert "--tenants" in out and "Examples:" in out


def test_cli_does_not_import_dagster():
    # P9: the CLI starts fast and needs no Dagster instance for its own commands.
    probe = "import sys, bg_ops.cli.main; print(sorted(m for m in ('dagster', 'dropbox', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_seed_twice_with_the_same_seed_gives_the_same_data(db_url, tmp_path, monkeypatch, capsys):
    import hashlib

    import sqlalchemy as sa

    from bg_ops.db.app_schema import AppBase
    from bg_ops.db.engine import get_engine

    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    monkeypatch.setenv("BG_OPS_FILES_ROOT", str(files))

    def snapshot():
        engine = get_engine(db_url)
        with engine.connect() as conn:
            rows = {t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(t.c.id))]
                    for t in AppBase.metadata.sorted_tables}
        digests = {p.relative_to(files).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in sorted(files.rglob("*")) if p.is_file()}
        return rows, digests

    args = ("demo", "seed", "--tenants", "3", "--seed", "7", "--today", "2026-11-23", "--json")
    code, out, err = run(capsys, *args)
    report = json.loads(out)
    assert code == 0 and report["tenants"] == ["acme", "nordlicht", "sakura"], err
    assert report["rows"]["companies"] == 3 and report["files"] > 0
    first = snapshot()
    assert len(first[0]["users"]) > 30 and len(first[1]) == report["files"]
    code, out, _ = run(capsys, *args)
    assert code == 0 and snapshot() == first
    # The bg_ops tables exist too: seeding migrates first.
    code, out, _ = run(capsys, "db", "current", "--json")
    assert json.loads(out)["up_to_date"] is True
