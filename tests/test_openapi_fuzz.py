"""schemathesis over the OpenAPI document a real `livia serve` serves: no input it can
generate from the schema makes a 500, and responses match what the schema documents."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from livia.sim import SimOpenAI, SimOpenAIConfig
from tests.test_serve import _clean_env, _free_port, _serve, _wait_ready

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    if shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("schemathesis is a dev dependency: make test installs it")
    async with SimOpenAI(SimOpenAIConfig(latency=0.0)) as model:
        port = _free_port()
        env = _clean_env(OPENAI_API_KEY="sk-test", LIVIA_LLM__BASE_URL=model.url)
        with _serve(tmp_path, port, env) as served:
            url = f"http://127.0.0.1:{port}"
            await _wait_ready(url, served)
            st = str(Path(sys.executable).parent / "schemathesis")
            result = await _run(
                [
                    st,
                    "run",
                    f"{url}/openapi.json",
                    "--checks",
                    CHECKS,
                    "--max-examples",
                    "8",
                    "--seed",
                    "20261202",
                    "--no-color",
                ],
                cwd=tmp_path,
            )
            log = served.output()
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Traceback" not in log
    tested = [line for line in result.stdout.splitlines() if "generated" in line]
    print("\n".join(tested))


async def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(
        subprocess.run, argv, cwd=cwd, capture_output=True, text=True, timeout=240
    )
