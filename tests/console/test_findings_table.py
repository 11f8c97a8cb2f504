"""Issue 21: the study page's findings table shows each finding's threshold with the model card's sensitivity,
specificity and operating point, and still shows result rows written before them."""

from __future__ import annotations

from listeners.console.pages import study_page
from tests.reports.study_factory import make_knee_study


def _row(uid: str) -> dict:
    return {"study_instance_uid": uid, "study_description": "KNEE", "calling_aes": ["MR1"], "instance_count": 18,
            "joint": "knee", "laterality": "R", "status": "delivered", "waiting": None,
            "completeness_reason": "all planes", "missing_planes": [], "turnaround_seconds": 12.0,
            "failure_reasons": []}


def _page(findings: list[dict]) -> str:
    results = [{"model_name": "OrthoDiffusion-knee", "model_version": "0.1.0-test", "findings": findings}]
    return study_page(_row("1.2.3"), [], results, [], [], user="admin")


def _cells(page: str, label: str) -> list[str]:
    """The cells after the finding's name ("medial meniscus tear (MM)": issue 24 names it in full)."""
    row = page.split(f" ({label})</td>")[1].split("</tr>")[0]
    return [cell.split(">", 1)[1] for cell in row.split("</td>")[:-1]]


def test_findings_show_the_cards_figures_at_their_threshold(tmp_path):
    from ortho_node.audit.timeline import findings_of

    prediction = make_knee_study(tmp_path, slices=2, rows=16, columns=16).prediction
    page = _page(findings_of(prediction))
    assert "<th>Sensitivity</th><th>Specificity</th><th>Operating point</th>" in page
    acl, pcl, mm, lm = (_cells(page, label) for label in ("ACL", "PCL", "MM", "LM"))
    assert acl[2:] == ["50 %", "82 % (n=11)", "97 % (n=21)",
                       "specificity &gt;= 96.25 % (&lt;= 0.3 false positives per normal study)"]
    assert pcl[3:5] == ["-", "90 % (n=32)"] and pcl[5].startswith("fixed threshold: no positive validation study")
    assert mm[3:] == ["75 %", "80 %", "max. sensitivity + specificity"]
    assert lm[3:] == ["-", "-", "-"]


def test_result_rows_written_before_operating_points_still_show():
    older = [{"label": "ACL", "probability": 0.7, "threshold": 0.5, "present": True, "plane_weights": None}]
    assert _cells(_page(older), "ACL")[2:] == ["50 %", "-", "-", "-"]
