"""The `livia` command line as users type it: real processes and the real parser."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from livia import __version__
from livia.cli import build_parser, main
from tests.conftest import fake_livia_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without keys or LIVIA_* settings (a fresh machine), plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("LIVIA_") and k != "OPENAI_API_KEY"
    }
    return {**env, **extra}


def livia(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m livia ARGS` as a real process; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "livia", *args],
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- --version and the global options -----------------------------------------------------


def test_version(tmp_path: Path) -> None:
    done = livia("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"livia {__version__}"


@pytest.mark.parametrize(
    ("argv", "config", "level"),
    [
        (["check"], None, "INFO"),
        (["--config", "a.toml", "check"], "a.toml", "INFO"),
        (["check", "--config", "b.toml"], "b.toml", "INFO"),
        (["--config", "a.toml", "check", "--config", "b.toml"], "b.toml", "INFO"),
        (["--log-level", "DEBUG", "check"], None, "DEBUG"),
        (["check", "--log-level", "WARNING"], None, "WARNING"),
        (["--config", "a.toml", "--log-level", "ERROR", "stats", "--once"], "a.toml", "ERROR"),
        (["sim", "--config", "s.toml", "openai"], "s.toml", "INFO"),
    ],
)
def test_global_options_before_or_after_the_subcommand(
    argv: list[str], config: str | None, level: str
) -> None:
    args = build_parser().parse_args(argv)
    assert args.config == config
    assert args.log_level == level


def test_serve_accepts_config_after_the_subcommand(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "f.toml"
    config.write_text(f'[server]\nport = {port}\n\n[store]\nurl = "sqlite:///{tmp_path}/x.db"\n')
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "livia", "serve", "--config", str(config)],
            cwd=tmp_path,
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "unrecognized arguments" not in log.read_text()


def test_check_reads_the_config_given_after_the_subcommand(tmp_path: Path) -> None:
    config = tmp_path / "f.toml"
    config.write_text("[apis.openai]\nmax_concurrent = 0\n")
    for argv in (["check", "--config", str(config)], ["--config", str(config), "check"]):
        done = livia(*argv, cwd=tmp_path)
        assert done.returncode == 1
        assert "apis.openai.max_concurrent" in done.stdout


# --- where the terminal clients connect -------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://example.org:9000/", "http://example.org:9000"),
        ("https://livia.example.org", "https://livia.example.org"),
        ("localhost:8090", "http://localhost:8090"),
        ("10.0.0.5:80", "http://10.0.0.5:80"),
        (":8090", "http://127.0.0.1:8090"),
        ("8090", "http://127.0.0.1:8090"),
        ("[::1]:8090", "http://[::1]:8090"),
    ],
)
def test_url_option_accepts_host_port_without_a_scheme(given: str, url: str) -> None:
    assert build_parser().parse_args(["stats", "--url", given]).url == url


@pytest.mark.parametrize("given", ["ftp://host:21", "host:port", "http://"])
def test_url_option_refuses_what_is_no_address(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["chat", "--url", given])
    assert exited.value.code == 2
    assert "not an address" in capsys.readouterr().err


@pytest.fixture
def no_livia_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LIVIA_") or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_livia_env")
def test_clients_default_to_the_configured_port(
    live_server: Callable[[Any], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_server(fake_livia_app(api_token="from-the-file"))
    port = url.rsplit(":", 1)[1]
    config = tmp_path / "x.toml"
    config.write_text(f'[server]\nhost = "0.0.0.0"\nport = {port}\napi_token = "from-the-file"\n')
    # the port (and token) from the file, with --config before or after the subcommand
    assert main(["--config", str(config), "stats", "--once"]) == 0
    assert f"Livia at http://127.0.0.1:{port}" in capsys.readouterr().out
    assert main(["chat", "--config", str(config), "--once", "hi"]) == 0
    assert "Hello! You said" in capsys.readouterr().out
    # the port from the environment
    monkeypatch.setenv("LIVIA_SERVER__PORT", port)
    monkeypatch.setenv("LIVIA_SERVER__API_TOKEN", "from-the-file")
    assert main(["stats", "--once"]) == 0
    assert f"Livia at http://127.0.0.1:{port}" in capsys.readouterr().out
    monkeypatch.delenv("LIVIA_SERVER__PORT")
    # --url host:port without a scheme
    assert main(["chat", "--url", f"127.0.0.1:{port}", "--once", "hi"]) == 0
    assert "Hello! You said" in capsys.readouterr().out
    assert main(["stats", "--url", f":{port}", "--once"]) == 0
    assert f"Livia at http://127.0.0.1:{port}" in capsys.readouterr().out


@pytest.mark.usefixtures("no_livia_env")
def test_client_default_is_8080_without_config(tmp_path: Path) -> None:
    done = livia("stats", "--once", cwd=tmp_path, env=_clean_env(LIVIA_SERVER__PORT="9"))
    assert done.returncode == 1
    assert "no Livia at http://127.0.0.1:9" in done.stderr


# --- ${NAME} references in the configuration ---------------------------------------------

ZAPIER_CONFIG = """
[[mcp.servers]]
name = "zapier"
url = "${ZAPIER_MCP_URL}"
headers = { Authorization = "Bearer ${ZAPIER_MCP_TOKEN}" }
"""


def test_an_unset_variable_is_named_by_check_and_serve(tmp_path: Path) -> None:
    config = tmp_path / "livia.toml"
    config.write_text(ZAPIER_CONFIG)
    env = _clean_env(ZAPIER_MCP_TOKEN="t")
    env.pop("ZAPIER_MCP_URL", None)
    done = livia("check", "--config", str(config), cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "✗ config: ZAPIER_MCP_URL is not set (used by mcp.servers[zapier].url)" in done.stdout, (
        done.stdout
    )
    assert "export ZAPIER_MCP_URL=..." in done.stdout
    assert "UnsupportedProtocol" not in done.stdout

    port = str(_free_port())
    done = livia("serve", "--port", port, "--config", str(config), cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "ZAPIER_MCP_URL is not set (used by mcp.servers[zapier].url)" in done.stderr
    assert "Traceback" not in done.stderr

    env.pop("ZAPIER_MCP_TOKEN")
    done = livia("check", "--config", str(config), cwd=tmp_path, env=env)
    assert "ZAPIER_MCP_TOKEN is not set (used by mcp.servers[zapier].headers.Authorization)" in (
        done.stdout
    )


def test_a_set_variable_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from livia.config import UnsetVariable, expand_env, load_settings

    config = tmp_path / "livia.toml"
    config.write_text(ZAPIER_CONFIG)
    monkeypatch.setenv("ZAPIER_MCP_URL", "https://mcp.example.org/s/1")
    monkeypatch.setenv("ZAPIER_MCP_TOKEN", "")  # set, even if empty
    (server,) = load_settings(config).mcp.servers
    assert server.resolved_url() == "https://mcp.example.org/s/1"
    assert server.resolved_headers() == {"Authorization": "Bearer "}
    monkeypatch.delenv("ZAPIER_MCP_URL")
    with pytest.raises(UnsetVariable, match=r"ZAPIER_MCP_URL is not set \(used by mcp"):
        server.resolved_url()
    assert expand_env("a${ZAPIER_MCP_URL}b") == "ab"  # without `where`: "" as documented


# --- stdio MCP servers installed in the venv ------------------------------------------------


def test_stdio_command_is_found_in_the_venv_without_path(tmp_path: Path) -> None:
    from livia.config import find_command

    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "mcp-server-time").exists():
        pytest.skip("mcp-server-time is not installed beside this interpreter")
    config = tmp_path / "livia.toml"
    config.write_text('[[mcp.servers]]\nname = "time"\ncommand = "mcp-server-time"\n')
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin
    )
    env = _clean_env(PATH=path or "/usr/bin:/bin")
    # not on PATH: found beside the interpreter
    done = livia("check", "--config", str(config), "--timeout", "30", cwd=tmp_path, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("✓", "✗", "!"))]
    time_line = next(line for line in lines if "mcp time" in line)
    assert time_line.startswith("✓ mcp time"), done.stdout + done.stderr
    assert "get_current_time" in time_line
    assert find_command("mcp-server-time") in (
        str(venv_bin / "mcp-server-time"),
        shutil.which("mcp-server-time"),
    )
    assert find_command("no-such-program-anywhere") == "no-such-program-anywhere"
    assert find_command("./relative/prog") == "./relative/prog"


# --- livia sim says how to point Livia at it -------------------------------------------------


@pytest.mark.parametrize(("kind", "check_line"), [("openai", "model"), ("mcp", "mcp sim")])
def test_sim_prints_how_to_point_livia_at_it(kind: str, check_line: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "livia", "sim", kind, "--port", "0"],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        hint = proc.stdout.readline().strip()
        assert hint.startswith("point Livia at it: "), hint
        words = shlex.split(hint.removeprefix("point Livia at it: "))
        assignments = dict(w.split("=", 1) for w in words[: words.index("livia")])
        assert words[words.index("livia") + 1] == "serve"
        if kind == "openai":
            assert assignments == {"LIVIA_LLM__BASE_URL": url}
        else:
            assert url in assignments["LIVIA_MCP__SERVERS"]
        # the printed variables do point Livia at the simulator
        env = _clean_env(**assignments, OPENAI_API_KEY="sk-sim-key-for-tests")
        done = livia("check", "--timeout", "20", cwd=tmp_path, env=env)
        line = next(x for x in done.stdout.splitlines() if x[2:].startswith(check_line + ":"))
        assert line.startswith("✓"), done.stdout
        assert "demo mode" not in line
    finally:
        proc.terminate()
        proc.wait(timeout=15)
