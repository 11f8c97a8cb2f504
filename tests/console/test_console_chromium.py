"""The console in headless Debian Chromium: sign in through the form, see the studies, a study with its key
images, the daily summary; screenshots kept under test-artifacts/console/."""

from __future__ import annotations


import pytest

from tests.conftest import ARTIFACTS
from tests.console.forms import sign_in_with_chromium
from tests.node_process import free_port
from tests.console.seeded import PASSWORD, USER
from tests.reports.ohif import CHROMIUM, Chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.fail("chromium missing: install the Debian package chromium")
    browser = Chromium(free_port(), width=1400, height=1000)
    yield browser
    browser.close()


def test_sign_in_and_browse_with_screenshots(seeded, chromium):
    out = ARTIFACTS / "console"
    sign_in_with_chromium(chromium, seeded.console_url, USER, PASSWORD)
    assert seeded.study_uid in chromium.evaluate("document.body.innerText")
    chromium.screenshot(out / "studies.png")

    chromium.evaluate("document.querySelector('td a.uid').click(); true")
    loaded = ("location.pathname.startsWith('/studies/') && document.images.length === 4 && "
              "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert chromium.wait_for(loaded, 30), "key images did not load"
    text = chromium.evaluate("document.body.innerText")
    assert "objects built" in text and "delivery failed" in text
    chromium.screenshot(out / "study.png")

    chromium.navigate(f"{seeded.console_url}/summary")
    assert chromium.wait_for("document.querySelectorAll('svg.chart').length === 4", 20)
    path = chromium.screenshot(out / "summary.png")
    assert path.stat().st_size > 10_000
