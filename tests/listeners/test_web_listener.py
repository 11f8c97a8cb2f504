"""listeners.web.listener: uvicorn on its own thread stops cleanly: a request in flight is answered, idle
keep-alive connections (TLS too) do not hold the stop up, the thread ends and the port is free again."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest
import requests
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from listeners.web.listener import TlsFiles, WebListener


def _slow(request):
    time.sleep(1.0)
    return PlainTextResponse("finished")


APP = Starlette(routes=[Route("/", lambda request: PlainTextResponse("hello")), Route("/slow", _slow)])


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("web-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"], cwd=folder,
                   check=True, capture_output=True)
    return TlsFiles(str(folder / "cert.pem"), str(folder / "key.pem"))


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_stop_answers_the_request_in_flight_and_drops_idle_connections(secure, tls):
    listener = WebListener(APP, "127.0.0.1", 0, name="test", tls=tls if secure else None)
    listener.start()
    base, verify = f"{listener.scheme}://127.0.0.1:{listener.port}", tls.certificate if secure else True
    idle = requests.Session()
    assert idle.get(f"{base}/", verify=verify, timeout=10).text == "hello"  # stays open, kept alive
    answers = {}
    slow = threading.Thread(target=lambda: answers.update(
        slow=requests.get(f"{base}/slow", verify=verify, timeout=10).text))
    slow.start()
    time.sleep(0.3)
    started = time.monotonic()
    listener.stop()
    seconds = time.monotonic() - started
    slow.join(5)
    assert answers == {"slow": "finished"} and seconds < 3
    assert not [t for t in threading.enumerate() if t.name == "test-http"]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", listener.port)) != 0
    listener.stop()  # idempotent
