"""``bg-ops --help`` reads like a manual, every command shows how it is used, and a database
without the tables a command needs is one line with the fix (U2, issue 8)."""

import click
import pytest

from bg_ops.cli.main import cli, main


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def help_of(capsys, *path: str) -> str:
    assert main([*path, "--help"]) == 0
    return capsys.readouterr().out


def test_top_level_help_describes_bg_ops_lists_every_group_and_gives_examples(capsys):
    text = help_of(capsys)
    assert "Dagster code location" in text and "Examples:" in text and "exit codes" in text
    manual = text.split("Options:")[0]
    for name in cli.commands:
        assert f"\n    {name} " in manual, f"'{name}' is missing from the command groups"


@pytest.mark.parametrize("path", list(leaf_commands(cli)), ids=" ".join)
def test_every_command_has_an_example(capsys, path):
    text = help_of(capsys, *path)
    assert "Example" in text, f"bg-ops {' '.join(path)} --help has no example"
    assert f"bg-ops {' '.join(path)}" in text.split("Options:")[0]


def test_a_database_without_tables_is_one_line_with_the_fix(db_url, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)  # reachable, but empty
    code = main(["tenants", "list"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: the database has no table companies: run 'bg-ops db upgrade' for bg_ops's tables, "
        "or point BG_OPS_DATABASE_URL at the platform's database ('bg-ops demo seed' for a demo)"
    ]
