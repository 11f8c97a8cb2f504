"""Issue 24: the console's and the API's study search by accession number, patient ID or name and study date
(facts recorded at intake from the header), shown behind the login only and never written to a log line."""

from __future__ import annotations

import io
import logging

import pytest
import requests

from listeners.console.passwords import hash_password
from tests.assembly.factory import store
from tests.console.forms import login
from tests.dicom_factory import mr_dataset

USER, PASSWORD = "reader", "long enough password"
PATIENTS = {  # study UID -> (accession number, patient ID, patient name, study date)
    "1.2.826.0.1.3680043.8.498.24.1": ("ACC-0001", "PID-SEARCH-1", "DOE^JANE", "20250301"),
    "1.2.826.0.1.3680043.8.498.24.2": ("ACC-0002", "PID-SEARCH-2", "ROE^RICHARD", "20250302"),
    "1.2.826.0.1.3680043.8.498.24.3": ("ACC-0003", "PID-SEARCH-3", "DOE^JOHN", "20250302"),
}


@pytest.fixture
def searchable(start_node):
    """A node with the console on, that stored one instance of each study in ``PATIENTS``, and the log text of
    that (every logger, DEBUG and up)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    # The test's own HTTP client (urllib3) logs the URLs it requests, search terms included: not the node's log.
    handler.addFilter(lambda record: not record.name.startswith("urllib3"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    try:
        node = start_node(**{"console.enabled": True, "console.port": 0,
                             "console.users": [f"{USER}:{hash_password(PASSWORD)}"]})
        datasets = []
        for number, (uid, (accession, patient_id, name, day)) in enumerate(PATIENTS.items(), start=1):
            ds = mr_dataset(study_uid=uid, series_uid=f"{uid}.1", instance_number=1, seed=number)
            ds.AccessionNumber, ds.PatientID, ds.PatientName, ds.StudyDate = accession, patient_id, name, day
            datasets.append(ds)
        store(node.scp.port, datasets)
        browser = requests.Session()
        url = f"http://127.0.0.1:{node.console.port}"
        assert login(browser, url, USER, PASSWORD, allow_redirects=False).status_code == 303
        yield url, browser, stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _found(browser, url: str, path: str, **params) -> set[str]:
    response = browser.get(f"{url}{path}", params=params, timeout=10)
    assert response.status_code == 200
    if path.startswith("/api/"):
        return {row["study_instance_uid"] for row in response.json()["items"]}
    return {uid for uid in PATIENTS if uid in response.text}


@pytest.mark.parametrize("path", ["/studies", "/api/v1/studies"])
@pytest.mark.parametrize("params, expected", [
    ({"search": "ACC-0002"}, {2}), ({"search": "PID-SEARCH-3"}, {3}), ({"search": "PID-SEARCH"}, {1, 2, 3}),
    ({"search": "doe"}, {1, 3}), ({"study_date": "2025-03-02"}, {2, 3}),
    ({"study_date": "2025-03-02", "search": "DOE"}, {3}), ({"study_date": "2025-03-03"}, set()),
    ({"search": "nothing-like-it"}, set()),
])
def test_search_by_accession_patient_and_study_date(searchable, path, params, expected):
    url, browser, _ = searchable
    uids = list(PATIENTS)
    assert _found(browser, url, path, **params) == {uids[n - 1] for n in expected}


def test_identifiers_shown_behind_the_login_and_never_logged(searchable):
    url, browser, stream = searchable
    uid = next(iter(PATIENTS))
    listing = browser.get(f"{url}/studies", params={"search": "PID-SEARCH-1"}, timeout=10).text
    assert "ACC-0001" in listing and "PID-SEARCH-1" in listing and "2025-03-01" in listing
    assert "DOE^JANE" not in listing  # names only on the study page
    page = browser.get(f"{url}/studies/{uid}", timeout=10).text
    assert "DOE^JANE, ID PID-SEARCH-1" in page
    study = browser.get(f"{url}/api/v1/studies/{uid}", timeout=10).json()
    assert (study["patient_id"], study["patient_name"], study["accession_number"], study["study_date"]) == (
        "PID-SEARCH-1", "DOE^JANE", "ACC-0001", "2025-03-01")
    assert requests.get(f"{url}/api/v1/studies/{uid}", timeout=10).status_code == 401
    assert "PID-SEARCH-1" not in requests.get(f"{url}/studies/{uid}", timeout=10).text  # the login page
    csv = browser.get(f"{url}/studies.csv", timeout=10).text
    assert uid in csv and "PID-SEARCH-1" not in csv and "DOE" not in csv  # exports carry no identifiers
    logged = stream.getvalue()
    assert logged and uid in logged  # the log does name studies, by UID
    for accession, patient_id, name, _day in PATIENTS.values():
        assert patient_id not in logged and name not in logged and name.split("^")[0] not in logged
