"""Issue 24 in headless Debian Chromium at 1400 px: an operator signs in through the form, the lists fit the
window and load their refresh script (CSP allows it), the key images open at full size, and pressing "Resend
results" on the study page sends the results again to the PACS peer (a second node), with the user in the audit
trail. Screenshots under test-artifacts/console/."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import func, select

from ortho_node.clock import as_utc
from ortho_node.db.models import Association, AuditEvent, DeliveryItem
from tests.conftest import ARTIFACTS
from tests.console.seeded import OPERATOR, OPERATOR_PASSWORD, seed
from tests.console.forms import sign_in_with_chromium
from tests.node_process import free_port
from tests.reports.ohif import CHROMIUM, Chromium

pytestmark = pytest.mark.slow
WIDTH = 1400


@pytest.fixture(scope="module")
def acting(tmp_path_factory):
    node = seed(tmp_path_factory.mktemp("chromium-acting"), operator=True)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.fail("chromium missing: install the Debian package chromium")
    browser = Chromium(free_port(), width=WIDTH, height=1000)
    yield browser
    browser.close()


def _fits(chromium) -> bool:
    return chromium.evaluate(f"document.documentElement.scrollWidth <= {WIDTH}")


def test_operator_resends_from_the_study_page(acting, chromium):
    out = ARTIFACTS / "console"
    sign_in_with_chromium(chromium, acting.console_url, OPERATOR, OPERATOR_PASSWORD)
    assert chromium.evaluate("document.body.dataset.refresh") == "30"
    assert chromium.wait_for("performance.getEntriesByType('resource').some(e => e.name.endsWith('/console.js'))",
                             10), "the refresh script did not load"
    assert _fits(chromium), "the studies table overflows 1400 px"
    for path in ("/summary", "/failures", "/destinations", "/deliveries"):
        chromium.navigate(acting.console_url + path)
        assert chromium.wait_for(f"location.pathname === '{path}' && document.readyState === 'complete'", 20)
        assert _fits(chromium), f"{path} overflows 1400 px"
    chromium.screenshot(out / "deliveries-operator.png")

    chromium.navigate(f"{acting.console_url}/studies/{acting.study_uid}")
    assert chromium.wait_for("document.readyState === 'complete' && !!document.querySelector("
                             "'button[data-action=resend]')", 20)
    assert _fits(chromium), "the study page overflows 1400 px"
    assert chromium.evaluate("Array.from(document.querySelectorAll('.images a')).every("
                             "a => a.href === a.querySelector('img').src && a.target === '_blank')")
    assert "medial collateral ligament injury (MCL)" in chromium.evaluate("document.body.innerText")

    with acting.pacs.session_factory() as session:
        associations = session.scalar(select(func.count(Association.id)))
    pressed = dt.datetime.now(dt.timezone.utc)
    chromium.evaluate("document.querySelector('button[data-action=resend]').click(); true")
    assert chromium.wait_for("!!document.querySelector('.notice')", 30), "no notice after the resend"
    assert "16 result objects queued for ARCHIVE, PACS" in chromium.evaluate(
        "document.querySelector('.notice').innerText")

    def arrived() -> bool:
        with acting.node.session_factory() as session:
            items = session.scalars(select(DeliveryItem).where(DeliveryItem.destination == "PACS")).all()
        return bool(items) and all(i.state == "delivered" and as_utc(i.delivered_at) >= pressed for i in items)

    deadline = time.monotonic() + 30
    while not arrived() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert arrived(), "the results did not arrive at the PACS again"
    with acting.pacs.session_factory() as session:
        assert session.scalar(select(func.count(Association.id))) > associations
    with acting.node.session_factory() as session:
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "operator_action")).all()
    assert event.details["user"] == OPERATOR and event.details["via"] == "console"
    assert event.details["action"] == "resend" and event.details["outcome"] == "done"
    chromium.navigate(f"{acting.console_url}/studies/{acting.study_uid}")
    assert chromium.wait_for("document.readyState === 'complete'", 20)
    assert "results queued again for PACS" in chromium.evaluate("document.body.innerText")
    chromium.screenshot(out / "study-operator.png")
