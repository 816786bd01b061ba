"""`livia serve --workers N` as a real process: N workers on one port, sharing the store and
(through Redis) the limits; SIGTERM stops them all; without Redis it refuses to start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_serve import _clean_env, _free_port

pytestmark = pytest.mark.timeout(90)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_answer_on_one_port_and_sigterm_stops_all(
    tmp_path: Path, redis_url: str
) -> None:
    port = _free_port()
    env = _clean_env(
        LIVIA_COORDINATION__BACKEND="redis",
        LIVIA_COORDINATION__REDIS_URL=redis_url,
        LIVIA_COORDINATION__PREFIX="workers",
        LIVIA_SERVER__INSTANCE_ID="box",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "livia", "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        seen: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"saw only {set(seen)}:\n{log.read_text()}"
            try:  # a new connection each time: the kernel hands it to either worker
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                    health = client.get("/healthz").json()
                    if health.get("instance") and health["instance"] not in seen:
                        stats = client.get("/stats").json()
                        seen[health["instance"]] = stats
            except httpx.TransportError:
                time.sleep(0.1)
        assert set(seen) == {"box-w0", "box-w1"}
        for stats in seen.values():
            assert stats["loop"]["interval_ms"] == 100.0  # each worker runs its lag monitor
            assert stats["upstreams"]["openai"]["coordination"]["backend"] == "redis"
        # both workers answer a message through the shared store
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for i in range(4):
                body = {"conversation_id": f"w{i}", "user_id": "me", "text": "hello"}
                reply = client.post("/v1/chat", json=body)
                assert reply.status_code == 200 and reply.json()["error"] is None
        workers = [
            int(pid) for pid in re.findall(r"worker \d \(pid (\d+)\) serving", log.read_text())
        ]
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()
        for pid in workers:
            assert not _alive(pid)
        text = log.read_text()
        assert "Traceback" not in text
        assert text.count("worker 0 (pid") == 1 and text.count("worker 1 (pid") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_several_workers_without_redis_are_refused_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livia", "serve", "--port", "0", "--workers", "2"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'backend = "redis"' in lines[0], result.stderr
