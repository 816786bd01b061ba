"""The Makefile, read by `make` itself (`make -n` prints what a target would run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` would run with a fresh venv at `venv`."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],  # also under make
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c and "--upgrade pip" not in c]


def test_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    commands = dry_run("run", tmp_path / "venv")
    assert any(f"-m venv {tmp_path / 'venv'}" in c for c in commands)
    (install,) = installs(commands)
    assert install.endswith("pip install --quiet -e .")
    assert commands[-1].endswith("/bin/livia serve")


def test_make_test_installs_the_dev_extras(tmp_path: Path) -> None:
    for target in ("pytest", "lint", "typecheck", "test"):
        commands = dry_run(target, tmp_path / "venv")
        assert any(f"-m venv {tmp_path / 'venv'}" in c for c in commands), target
        assert [c.rsplit(" ", 1)[1] for c in installs(commands)] == ["'.[dev]'"], target
        # the dev install holds the runtime one: `make run` afterwards installs nothing
        assert any(c.startswith("touch") and ".installed-runtime" in c for c in commands)


def test_up_to_date_stamps_install_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    pyproject = (ROOT / "pyproject.toml").stat().st_mtime
    for stamp in (".installed", ".installed-runtime"):
        (venv / stamp).touch()
        assert (venv / stamp).stat().st_mtime >= pyproject
    assert installs(dry_run("run", venv)) == []
    assert installs(dry_run("pytest", venv)) == []
