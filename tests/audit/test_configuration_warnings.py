"""Issue 22, item 2: set-ups that work but are probably not meant, warned about at start-up and on /healthz."""

from __future__ import annotations

import logging

import requests

from listeners.console.pages import warnings_banner
from listeners.console.passwords import hash_password
from ortho_node.audit.status import configuration_warnings, is_loopback
from tests.console.forms import login as sign_in


def test_warnings_of_each_set_up(make_settings):
    quiet = make_settings(destinations=["PACS=PACS@127.0.0.1:104"])
    assert configuration_warnings(quiet) == []
    [no_destination] = configuration_warnings(make_settings())
    assert no_destination.startswith("no destination configured")
    assert configuration_warnings(make_settings(**{"model.enabled": False})) == []  # receive-only: meant
    open_node = make_settings(**{"dicom.host": "0.0.0.0", "destinations": ["PACS=PACS@127.0.0.1:104"]})
    [any_ae] = configuration_warnings(open_node)
    assert any_ae.startswith("any calling AE title is accepted on 0.0.0.0")
    limited = make_settings(**{"dicom.host": "0.0.0.0", "dicom.allowed_calling_aets": ["MR1"],
                               "destinations": ["PACS=PACS@127.0.0.1:104"]})
    assert configuration_warnings(limited) == []
    console = make_settings(**{"console.enabled": True, "console.host": "0.0.0.0",
                               "console.users": [f"admin:{hash_password('long enough password')}"],
                               "destinations": ["PACS=PACS@127.0.0.1:104"]})
    [console_warning] = configuration_warnings(console)
    assert console_warning.startswith("the admin console listens on 0.0.0.0:8080")
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0", "pacs.example.org")] == [
        True, True, True, True, False, False]


def test_warnings_at_start_up_and_on_healthz(start_node, caplog):
    with caplog.at_level(logging.WARNING, logger="ortho_node.app.node"):
        node = start_node(**{"dicom.host": "0.0.0.0", "metrics.enabled": True, "metrics.port": 0})
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("no destination configured") for m in logged)
    assert any(m.startswith("any calling AE title is accepted") for m in logged)
    report = requests.get(f"http://127.0.0.1:{node.metrics.port}/healthz", timeout=10).json()
    assert {"healthy", "checks", "warnings"} <= set(report)
    assert report["healthy"]  # a warning does not make the node unhealthy
    assert [w.split(":")[0] for w in report["warnings"]] == ["no destination configured",
                                                              "any calling AE title is accepted on 0.0.0.0"]


def test_warnings_on_the_console_main_page(start_node):
    password = "long enough password"
    node = start_node(**{"console.enabled": True, "console.port": 0,
                         "console.users": [f"admin:{hash_password(password)}"]})
    console = requests.Session()
    login = sign_in(console, f"http://127.0.0.1:{node.console.port}", "admin", password)
    assert login.status_code == 200 and login.url.endswith("/studies")
    banner = login.text.split('<div class="warnings" role="status">', 1)[1].split("</div>", 1)[0]
    assert "<li>no destination configured: studies are analysed but their results are delivered nowhere" in banner
    assert banner.count("<li>") == len(configuration_warnings(node.settings)) == 1
    assert warnings_banner([]) == "" and "&lt;b&gt;" in warnings_banner(["<b>"])
