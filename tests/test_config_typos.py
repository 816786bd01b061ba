"""Typos in the configuration are caught: unknown keys, unused policies, stray variables."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livia import config as config_module
from livia.config import ConfigError, config_warnings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LIVIA_* setting from the developer's shell; warnings not yet given."""
    for name in list(os.environ):
        if name.upper().startswith("LIVIA_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config_module, "_warned", set())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "livia.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_misspelt_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[apis.openai]\nmax_concurent = 3\n\n[server]\nprot = 1\n\n"
        '[[mcp.servers]]\nname = "t"\nurl = "http://x"\nnmae = "y"\n',
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert "apis.openai.max_concurent: unknown key; did you mean max_concurrent?" in message
    assert "server.prot: unknown key; did you mean port?" in message
    assert "mcp.servers.0.nmae: unknown key; did you mean name?" in message
    assert "Extra inputs are not permitted" not in message


def test_an_unrecognisable_key_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.zzz: unknown key; known: host, port"):
        load_settings(write(tmp_path, "[server]\nzzz = 1\n"))


def test_a_bad_value_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIVIA_SERVER__PORT", "eighty")
    with pytest.raises(
        ConfigError, match=r"server\.port: .*integer.* \(from \$LIVIA_SERVER__PORT\)"
    ):
        load_settings()
    monkeypatch.delenv("LIVIA_SERVER__PORT")
    monkeypatch.setenv("LIVIA_APIS__OPENAI__MAX_CONCURENT", "3")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert (
        "apis.openai.max_concurent: unknown key; did you mean max_concurrent? "
        "(from $LIVIA_APIS__OPENAI__MAX_CONCURENT)"
    ) in str(raised.value)


def test_policies_no_caller_uses_are_warned_about(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[apis.opeanai]
max_concurrent = 3

[apis.openai]
max_concurrent = 4

[apis.transcription]
max_concurrent = 1

[apis.images]
max_concurrent = 1

[apis.tools]
max_concurrent = 2

[apis.chat]
max_concurrent = 2

[apis.slackish]
max_concurrent = 2

[llm]
api = "chat"

[[mcp.servers]]
name = "t"
url = "http://x"
api = "tools"
""",
    )
    settings = load_settings(path)
    warnings = config_warnings(settings, {})
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("[apis.opeanai] is used by nothing; did you mean openai?")
    assert warnings[1].startswith("[apis.slackish] is used by nothing")


def test_slack_policy_counts_as_used_only_when_slack_is_on(tmp_path: Path) -> None:
    text = '[apis.chat-slack]\nmax_concurrent = 2\n\n[slack]\napi = "chat-slack"\nmode = "{}"\n'
    off = load_settings(write(tmp_path, text.format("off")))
    assert [w.split(" ")[0] for w in config_warnings(off, {})] == ["[apis.chat-slack]"]
    on = load_settings(write(tmp_path, text.format("socket")))
    assert config_warnings(on, {}) == []


def test_livia_variables_that_name_no_setting_are_warned_about() -> None:
    settings = load_settings()
    environ = {
        "LIVIA_SERVR__PORT": "9000",
        "LIVIA_SERVER__PORT": "9000",
        "LIVIA_APIS__OPENAI__MAX_CONCURRENT": "3",
        "LIVIA_APIS__ANYTHING__RETRY_ATTEMPTS": "3",
        "LIVIA_MCP__SERVERS": "[]",
        "LIVIA_CONFIG": "x.toml",
        "LIVIA_TEST_MCP_TOKEN": "t",
        "LIVIA_NOTHING": "1",
        "HOME": "/root",
    }
    assert config_warnings(settings, environ) == [
        "environment variable LIVIA_NOTHING is not a setting, ignored",
        "environment variable LIVIA_SERVR__PORT is not a setting, ignored; "
        "did you mean LIVIA_SERVER__PORT?",
    ]


def test_warnings_are_logged_once_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LIVIA_SERVR__PORT", "9000")
    path = write(tmp_path, "[apis.opeanai]\nmax_concurrent = 3\n")
    with caplog.at_level(logging.WARNING, logger="livia.config"):
        load_settings(path)
        load_settings(path)
    messages = [r.getMessage() for r in caplog.records if r.name == "livia.config"]
    assert len(messages) == 2, messages
    assert any("LIVIA_SERVR__PORT" in m for m in messages)
    assert any("[apis.opeanai]" in m for m in messages)


def test_livia_check_shows_the_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, "[apis.opeanai]\nmax_concurrent = 3\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LIVIA_")}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "livia", "check", "--config", str(path)],
        env={**env, "LIVIA_SERVR__PORT": "9000"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("did you mean LIVIA_SERVER__PORT?") == 1
    assert done.stderr.count("[apis.opeanai] is used by nothing; did you mean openai?") == 1
