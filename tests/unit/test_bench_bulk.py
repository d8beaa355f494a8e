"""The proxy part's traffic programs on loopback: the source, the fetcher
and the connect loop (the client speaks first)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

BULK = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bulk.py")


@pytest.fixture
def source():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, BULK, "source", "127.0.0.1", str(port)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        yield port
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def bulk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, BULK, *args], capture_output=True, text=True,
                          timeout=30)


def test_fetch_reads_what_the_source_sends_for_the_time_asked(source):
    r = bulk("fetch", "127.0.0.1", str(source), "--seconds", "0.2")
    assert r.returncode == 0, r.stderr
    start, result = r.stdout.splitlines()
    out = json.loads(result)
    assert start == "start"
    assert out["bytes"] > 0 and out["seconds"] >= 0.2
    assert out["mbps"] == pytest.approx(out["bytes"] / out["seconds"] / 1e6)


def test_connects_time_each_first_byte_and_say_their_median(source):
    r = bulk("connects", "127.0.0.1", str(source), "5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 5 and out["min_ms"] <= out["median_ms"] <= out["max_ms"]


def test_a_path_with_nothing_listening_fails_in_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = bulk("connects", "127.0.0.1", str(port), "1", "--timeout", "2")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("bulk.py connects: ConnectionRefusedError")
