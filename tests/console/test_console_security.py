"""Issue 24, phase 1: CSRF tokens on every form, the failed-login lock-out (audited), the console over TLS, and
the web listeners started and stopped with the node (ports released, threads ended)."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest
import requests
from sqlalchemy import select

from listeners.console.passwords import hash_password
from listeners.console.sessions import LoginThrottle, SessionCookies
from ortho_node.app.checks import StartupError, check_console_tls
from ortho_node.config import ConfigError
from ortho_node.db.models import AuditEvent
from tests.console.forms import csrf_token, login

USER, PASSWORD = "admin", "long enough password"


def _console(start_node, **overrides):
    return start_node(**{"console.enabled": True, "console.port": 0,
                         "console.users": [f"{USER}:{hash_password(PASSWORD)}"], **overrides})


def _events(node, kind: str) -> list[AuditEvent]:
    with node.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def test_forms_without_their_csrf_token_are_refused(start_node):
    node = _console(start_node)
    url = f"http://127.0.0.1:{node.console.port}"
    browser = requests.Session()
    page = browser.get(f"{url}/login", timeout=10)
    assert "ortho_console_login" in browser.cookies
    for data in ({"user": USER, "password": PASSWORD},  # no token
                 {"user": USER, "password": PASSWORD, "csrf_token": "0" * 64}):  # a made-up one
        refused = browser.post(f"{url}/login", data=data, allow_redirects=False, timeout=10)
        assert refused.status_code == 403 and "ortho_console=" not in refused.headers.get("Set-Cookie", "")
    # a token from one browser's login page is worthless with another browser's cookies (a forging site)
    forger = requests.Session()
    forged = forger.post(f"{url}/login", data={"user": USER, "password": PASSWORD, "csrf_token": csrf_token(page.text)},
                         allow_redirects=False, timeout=10)
    assert forged.status_code == 403
    assert not _events(node, "console_login")  # none of these signed anyone in

    signed_in = login(browser, url, USER, PASSWORD, allow_redirects=False)
    assert signed_in.status_code == 303
    studies = browser.get(f"{url}/studies", timeout=10)
    assert studies.status_code == 200
    # logout needs the session's token: without it (or with the login form's) the session stays open
    for data in ({}, {"csrf_token": csrf_token(page.text)}):
        assert browser.post(f"{url}/logout", data=data, allow_redirects=False, timeout=10).status_code == 403
        assert browser.get(f"{url}/studies", allow_redirects=False, timeout=10).status_code == 200
    out = browser.post(f"{url}/logout", data={"csrf_token": csrf_token(studies.text)}, allow_redirects=False,
                       timeout=10)
    assert out.status_code == 303 and out.headers["Location"] == "/login"
    assert browser.get(f"{url}/studies", allow_redirects=False, timeout=10).status_code == 303


def test_a_forged_or_altered_session_cookie_opens_nothing(start_node):
    node = _console(start_node)
    url = f"http://127.0.0.1:{node.console.port}"
    browser = requests.Session()
    assert login(browser, url, USER, PASSWORD).status_code == 200
    cookie = browser.cookies["ortho_console"]
    for value in (cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"), "eyJzaWQiOiJ4IiwidXNlciI6ImFkbWluIn0"):
        stranger = requests.Session()
        stranger.cookies.set("ortho_console", value)
        assert stranger.get(f"{url}/studies", allow_redirects=False, timeout=10).status_code == 303


def test_lock_out_after_failed_logins_is_audited(start_node):
    node = _console(start_node, **{"console.max_failed_logins": 3, "console.lockout_minutes": 10.0})
    url = f"http://127.0.0.1:{node.console.port}"
    browser = requests.Session()
    for _ in range(3):
        assert login(browser, url, USER, "wrong password", allow_redirects=False).status_code == 401
    locked = login(browser, url, USER, PASSWORD, allow_redirects=False)  # the right password, too late
    assert locked.status_code == 429 and "locked" in locked.text and int(locked.headers["Retry-After"]) > 500
    assert "ortho_console=" not in locked.headers.get("Set-Cookie", "")
    [lockout] = _events(node, "console_locked_out")
    assert lockout.details["user"] == USER and lockout.details["failures"] == 3 and lockout.severity == "warning"
    failed = _events(node, "console_login_failed")
    assert len(failed) == 4 and failed[-1].details == {"user": USER, "locked": True}
    assert all(event.peer_host == "127.0.0.1" for event in failed)
    # another user name is not locked by this one's failures
    assert login(requests.Session(), url, "someone", "wrong", allow_redirects=False).status_code == 401


def test_lock_out_ends_after_its_time_and_a_success_clears_the_count():
    now = [0.0]
    throttle = LoginThrottle(3, 600.0, clock=lambda: now[0])
    assert not throttle.failed("a") and not throttle.failed("a")
    throttle.succeeded("a")
    assert not throttle.failed("a") and not throttle.failed("a") and throttle.locked_until("a") is None
    assert throttle.failed("a")  # the third in a row locks (reported once)
    assert throttle.locked_until("a") == 600.0 and throttle.locked_until("b") is None
    now[0] = 599.0
    assert throttle.locked_until("a") == pytest.approx(1.0)
    now[0] = 600.5
    assert throttle.locked_until("a") is None
    assert not throttle.failed("a")  # a fresh count after the lock-out


def test_sessions_expire_and_close():
    now = [0.0]
    sessions = SessionCookies(b"k" * 32, 60.0, clock=lambda: now[0])
    session, cookie = sessions.open("admin")
    assert sessions.read(cookie) == session
    assert SessionCookies(b"x" * 32, 60.0).read(cookie) is None  # another key (a restarted node)
    now[0] = 61.0
    assert sessions.read(cookie) is None
    session, cookie = sessions.open("admin")
    sessions.close(session)
    assert sessions.read(cookie) is None


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-tls")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "console.key", "-out",
                    "console.pem"], cwd=folder, check=True, capture_output=True)
    return folder


def test_console_over_tls(start_node, certificate):
    node = _console(start_node, **{"console.tls_cert": str(certificate / "console.pem"),
                                   "console.tls_key": str(certificate / "console.key"),
                                   "metrics.enabled": True, "metrics.port": 0})
    url = f"https://127.0.0.1:{node.console.port}"
    browser, trusted = requests.Session(), str(certificate / "console.pem")
    response = login(browser, url, USER, PASSWORD, allow_redirects=False, verify=trusted)
    assert response.status_code == 303 and "; Secure" in response.headers["Set-Cookie"]
    assert browser.get(f"{url}/studies", timeout=10, verify=trusted).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP on the TLS port gets no answer
        requests.get(f"http://127.0.0.1:{node.console.port}/login", timeout=10)
    # the metrics port stays plain HTTP (metrics.* unchanged)
    assert requests.get(f"http://127.0.0.1:{node.metrics.port}/healthz", timeout=10).status_code == 200


def test_console_tls_settings_are_checked_at_start_up(make_settings, certificate, tmp_path):
    users = {"console.enabled": True, "console.users": [f"{USER}:{hash_password(PASSWORD)}"]}
    with pytest.raises(ConfigError, match="console.tls_key: required"):
        make_settings(**users, **{"console.tls_cert": str(certificate / "console.pem")})
    with pytest.raises(ConfigError, match="console.tls_cert: file .* does not exist"):
        make_settings(**users, **{"console.tls_cert": str(tmp_path / "none.pem"),
                                  "console.tls_key": str(certificate / "console.key")})
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(StartupError, match="console.tls_cert / console.tls_key: cannot be loaded"):
        check_console_tls(make_settings(**users, **{"console.tls_cert": str(tmp_path / "bad.pem"),
                                                    "console.tls_key": str(certificate / "console.key")}))
    check_console_tls(make_settings(**users, **{"console.tls_cert": str(certificate / "console.pem"),
                                                "console.tls_key": str(certificate / "console.key")}))


def _web_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-http")]


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_web_listeners_start_and_stop_with_the_node(make_settings):
    from ortho_node.app.node import Node

    before = set(_web_threads())
    settings = {"console.enabled": True, "console.port": 0, "console.users": [f"{USER}:{hash_password(PASSWORD)}"],
                "metrics.enabled": True, "metrics.port": 0}
    node = Node(make_settings(**settings))
    node.prepare()
    node.start()
    console_port, metrics_port = node.console.port, node.metrics.port
    assert node.console.running and node.metrics.running and len(set(_web_threads()) - before) == 2
    keep_alive = requests.Session()  # an idle keep-alive connection must not hold the stop up
    assert keep_alive.get(f"http://127.0.0.1:{console_port}/login", timeout=10).status_code == 200
    assert keep_alive.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10).json()["healthy"]
    node.stop()
    assert node.console is None and node.metrics is None
    assert not (set(_web_threads()) - before)
    assert _refused(console_port) and _refused(metrics_port)
    # the same fixed ports serve a new node at once
    again = Node(make_settings(**{**settings, "console.port": console_port, "metrics.port": metrics_port,
                                  "storage.data_dir": make_settings().storage.data_dir}))
    again.prepare()
    again.start()
    try:
        assert requests.get(f"http://127.0.0.1:{console_port}/login", timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 200
    finally:
        again.stop()
    assert _refused(console_port) and not (set(_web_threads()) - before)


def test_a_taken_console_port_fails_the_start(make_settings):
    from listeners.web.listener import WebListener
    from starlette.applications import Starlette

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        listener = WebListener(Starlette(), "127.0.0.1", taken.getsockname()[1], name="test")
        before = set(_web_threads())
        with pytest.raises(OSError):
            listener.start()
        assert not (set(_web_threads()) - before)
