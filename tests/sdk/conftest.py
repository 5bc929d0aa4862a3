"""Starts the real glmgate binary in front of `glmgate mock` for the SDK tests.

The binary comes from $GLMGATE_BIN (scripts/test sets it); ports are picked free on loopback.
"""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ADMIN_TOKEN = "sdk-admin-token"
BIN = os.environ.get("GLMGATE_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/glmgate"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline=30.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Gateway:
    def __init__(self, base, key, mock):
        self.base = base
        self.key = key
        self.mock = mock

    def mock_stats(self):
        with urllib.request.urlopen(f"{self.mock}/_mock/stats") as r:
            return json.load(r)

    def metrics(self):
        """`GET /metrics` with the admin token, as text."""
        req = urllib.request.Request(f"{self.base}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req) as r:
            assert r.headers["content-type"].startswith("application/openmetrics-text")
            return r.read().decode()

    def stats(self):
        req = urllib.request.Request(f"{self.base}/stats", headers={"Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(req) as r:
            return json.load(r)


def start_gateway(formats):
    """glmgate in front of a fresh mock; `formats` says which upstream APIs it may use:
    "both", "openai" (an OpenAI-only upstream) or "anthropic"."""
    tmp = tempfile.mkdtemp(prefix="glmgate-sdk-")
    mock_port, gw_port = free_port(), free_port()
    procs = []
    try:
        # A single-format mock: the other API's paths do not exist, as on such an upstream.
        only = [] if formats == "both" else ["--only", formats]
        procs.append(subprocess.Popen([BIN, "mock", "--listen", f"127.0.0.1:{mock_port}", *only],
                                      stderr=open(os.path.join(tmp, "mock.log"), "w")))
        mock = f"http://127.0.0.1:{mock_port}"
        wait_http(f"{mock}/_mock/stats")
        # The gateway is configured with the API the mock serves, and no other.
        openai = f"{mock}/api/coding/paas/v4" if formats in ("both", "openai") else ""
        anthropic = f"{mock}/api/anthropic" if formats in ("both", "anthropic") else ""
        config = os.path.join(tmp, "glmgate.toml")
        with open(config, "w") as f:
            f.write(f"""
[server]
listen = "127.0.0.1:{gw_port}"
[store]
path = "{tmp}/glmgate.db"
[upstream]
preset = "custom"
openai_base_url = "{openai}"
anthropic_base_url = "{anthropic}"
keys = ["sdk-upstream-key"]
[accounting]
flush_interval_ms = 50
[admin]
token = "{ADMIN_TOKEN}"
""")
        key = subprocess.run([BIN, "keys", "create", "--name", "sdk", "--config", config],
                             check=True, capture_output=True, text=True).stdout.strip()
        procs.append(subprocess.Popen([BIN, "serve", "--config", config],
                                      stderr=open(os.path.join(tmp, "gateway.log"), "w")))
        base = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{base}/health")
        yield Gateway(base, key, mock)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def gateway():
    yield from start_gateway("both")


@pytest.fixture(scope="session")
def openai_only_gateway():
    yield from start_gateway("openai")


@pytest.fixture(scope="session")
def anthropic_only_gateway():
    yield from start_gateway("anthropic")
