"""The `livia` command line as users type it: real processes and the real parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from livia import __version__
from livia.cli import build_parser


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
