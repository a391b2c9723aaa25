"""The project's .streamlit/config.toml: a plain `streamlit run dashboard/app.py` from the project root, with no
command-line flags, listens on 127.0.0.1 only, refuses a websocket whose Host is not a loopback name, hides
tracebacks, has no Deploy button, sends no usage stats, watches no files and bounds uploads."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from e2e.appserver import free_port, start_app, stop_app, wait_healthy

from core.common.limits import MAX_QA_FILE_BYTES, MAX_RESULT_FILE_BYTES

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / ".streamlit" / "config.toml"


def test_config_has_the_safe_defaults():
    assert (ROOT / "dashboard" / ".streamlit" / "config.toml").resolve() == CONFIG.resolve()
    config = tomllib.loads(CONFIG.read_text())
    server, client = config["server"], config["client"]
    assert server["address"] == "127.0.0.1"
    assert {"localhost", "127.0.0.1", "::1"} <= set(server["allowedHosts"]) and "*" not in server["allowedHosts"]
    assert server["headless"] is True and server["fileWatcherType"] == "none"
    assert server["maxUploadSize"] * 2**20 == MAX_QA_FILE_BYTES == MAX_RESULT_FILE_BYTES  # no upload the readers refuse
    assert server["enableXsrfProtection"] is True and server["enableCORS"] is True
    assert client["showErrorDetails"] in {"type", "none"}  # neither shows a traceback nor a message with paths
    assert client["toolbarMode"] == "minimal"
    assert config["browser"]["gatherUsageStats"] is False


@pytest.fixture(scope="module", params=["from the project root", "from another folder"])
def bare_server(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, int]]:
    """`python -m streamlit run dashboard/app.py` with no flags at all (the port comes from Streamlit's own
    environment variable, which is not a flag), from the project root (Streamlit reads ./.streamlit/config.toml)
    and from an unrelated folder (it reads dashboard/.streamlit/config.toml, a link to the same file)."""
    port = free_port()
    home = tmp_path_factory.mktemp("home")
    elsewhere = request.param == "from another folder"
    env = {"ULENS_AUTOLOAD": "0", "ULENS_HOME": str(home)}
    process = start_app(port, home / "server.log", env, cwd=home if elsewhere else ROOT, bare=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield process, port
    finally:
        stop_app(process)


def test_plain_streamlit_run_listens_on_loopback_only(bare_server):
    process, port = bare_server
    listening = [c for c in psutil.Process(process.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert any(c.laddr.port == port for c in listening)
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}


def handshake(port: int, host: str) -> str:
    """The status line of the server's answer to a websocket upgrade of /_stcore/stream sent with `host`."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /_stcore/stream HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: streamlit\r\n"
        "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
def test_websocket_from_a_loopback_name_is_accepted(bare_server, name):
    _, port = bare_server
    assert " 101 " in handshake(port, f"{name}:{port}")


@pytest.mark.parametrize("name", ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io"])
def test_websocket_with_a_foreign_host_is_refused(bare_server, name):
    """DNS rebinding: a page served as evil.example whose name now resolves to 127.0.0.1 reaches the port, but the
    browser sends its own name as Host."""
    _, port = bare_server
    status = handshake(port, f"{name}:{port}")
    assert status.startswith("HTTP/1.1 ") and " 101 " not in status
