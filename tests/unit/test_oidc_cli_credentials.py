"""The token file `qustody login` keeps: owner-only, per gateway, refused once expired."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from qustody.cli import login as cli_login
from qustody.cli.main import cli


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QUSTODY_CONFIG_DIR", str(tmp_path / "qustody"))
    return tmp_path / "qustody"


def keep(url: str, token: str, expires: datetime) -> None:
    gateways = cli_login._read()
    gateways[url] = {"token": token, "expires_at": expires.isoformat()}
    cli_login._write(gateways)


def test_tokens_are_kept_per_gateway_owner_only(config: Path) -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    keep("https://a.example", "token-a", later)
    keep("https://b.example", "token-b", later)
    path = config / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    assert cli_login.stored_token("https://a.example/") == "token-a"
    assert cli_login.stored_token("https://b.example") == "token-b"
    assert cli_login.stored_token("https://c.example") is None
    assert [p.name for p in config.iterdir()] == ["credentials.json"]  # no temporary left


def test_an_expired_token_says_to_sign_in_again(config: Path) -> None:
    keep("https://a.example", "token-a", datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(click.UsageError, match="qustody login"):
        cli_login.stored_token("https://a.example")


def test_a_broken_file_is_reported_not_a_traceback(config: Path) -> None:
    config.mkdir()
    (config / "credentials.json").write_text("{not json")
    with pytest.raises(click.ClickException, match="delete it"):
        cli_login.stored_token("https://a.example")


def test_logout_forgets_only_this_gateway(config: Path) -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    keep("https://a.example", "token-a", later)
    keep("https://b.example", "token-b", later)
    runner = CliRunner()
    out = runner.invoke(cli, ["--url", "https://a.example", "logout"])
    assert out.exit_code == 0, out.output
    assert "Signed out" in out.output
    gateways = json.loads((config / "credentials.json").read_text())["gateways"]
    assert list(gateways) == ["https://b.example"]
    again = runner.invoke(cli, ["--url", "https://a.example", "logout"])
    assert "Not signed in" in again.output
