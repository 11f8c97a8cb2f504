"""Server-rendered HTML of the admin console (``listeners.console.server`` serves it): one self-contained page each,
inline CSS and SVG, no scripts, no external assets. Every value is escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ortho_node.audit.views import JOINTS, STATUSES
from listeners.console.charts import bar_chart, line_chart

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
header{background:#1a365d;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:500} header .brand{font-weight:700;margin-right:20px}
header form{margin-left:auto} header button{background:none;border:1px solid #fff;color:#fff;padding:3px 10px}
main{padding:16px 20px} h1{font-size:1.3em;margin:0 0 12px} h2{font-size:1.1em;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border-bottom:1px solid #e2e8f0;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#edf2f7;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.uid{font-family:ui-monospace,monospace;font-size:12px} .muted{color:#718096}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e2e8f0}
.delivered,.succeeded{background:#c6f6d5} .failed,.delivery_failed,.job_failed{background:#fed7d7}
.skipped,.job_skipped,.job_retry,.delivering,.pending,.waiting{background:#feebc8} .processing,.queued,.running{background:#bee3f8}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin-bottom:12px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4a5568}
input,select,button{font:inherit;padding:3px 6px} .reason{color:#9b2c2c;font-size:12px}
.login{max-width:320px;margin:80px auto;background:#fff;padding:24px;border:1px solid #e2e8f0}
.login label{display:block;margin:10px 0 4px} .login input{width:100%;box-sizing:border-box}
.error{color:#c53030} .images img{max-width:100%;border:1px solid #cbd5e0;margin:0 10px 10px 0}
.chart{background:#fff;border:1px solid #e2e8f0;margin:0 12px 12px 0} .chart-title{font-size:13px;font-weight:600}
.axis{font-size:11px;fill:#4a5568} dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}
dt{color:#4a5568} dd{margin:0} footer{padding:10px 20px;color:#718096;font-size:12px}
.warnings{background:#fefcbf;border:1px solid #d69e2e;padding:6px 12px;margin-bottom:12px;font-size:13px}
.warnings ul{margin:4px 0 0;padding-left:20px} .ignored{background:#e9d8fd}
"""

NAV = (("/studies", "Studies"), ("/summary", "Daily summary"), ("/deliveries", "Deliveries"),
       ("/failures", "Failures"))


def page(title: str, body: str, *, user: str | None) -> str:
    nav = ""
    if user is not None:
        links = "".join(f'<a href="{href}">{escape(label)}</a>' for href, label in NAV)
        nav = (f'<header><span class="brand">OrthoDiffusion Node</span>{links}<form method="post" action="/logout">'
               f'<span class="muted">{escape(user)}</span> <button type="submit">Log out</button></form></header>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - OrthoDiffusion '
            f'Node</title><meta name="viewport" content="width=device-width"><style>{CSS}</style></head><body>{nav}'
            f'<main>{body}</main><footer>Read-only admin console. Results are AI-generated and not for diagnostic '
            f'use.</footer></body></html>')


def login_page(*, error: str | None = None, next_path: str = "/studies") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (f'<form class="login" method="post" action="/login"><h1>Sign in</h1>{message}'
            f'<input type="hidden" name="next" value="{escape(next_path)}">'
            '<label for="user">User name</label><input id="user" name="user" autocomplete="username" required '
            'autofocus><label for="password">Password</label><input id="password" name="password" type="password" '
            'autocomplete="current-password" required><p><button type="submit">Sign in</button></p></form>')
    return page("Sign in", body, user=None)


def _when(value: dt.datetime | None) -> str:
    return "" if value is None else escape(value.strftime("%Y-%m-%d %H:%M:%S"))


def _seconds(value: float | None) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _badge(state: str | None) -> str:
    return f'<span class="badge {escape(state or "")}">{escape((state or "-").replace("_", " "))}</span>'


def _finding_badge(present: bool) -> str:
    return '<span class="badge failed">present</span>' if present else '<span class="badge">absent</span>'


def _card_figure(finding: Mapping[str, Any], name: str, count: str) -> str:
    """The card's validation figure of a finding row, with its study count where known; "-" for rows and cards
    without it."""
    value = finding.get(name)
    if value is None:
        return "-"
    studies = ((finding.get("operating_point") or {}).get("validation") or {}).get(count)
    return f"{100 * value:.0f} %" + ("" if studies is None else f" (n={studies})")


def _operating_point(point: Mapping[str, Any] | None) -> str:
    """How a finding's threshold was chosen, in words (:class:`ortho_node.prediction.OperatingPoint` as JSON)."""
    if not point:
        return "-"
    rule, target, budget = point.get("rule"), point.get("target_specificity"), point.get("fp_budget")
    if rule == "target_specificity":
        words = f"specificity >= {round(100 * target, 2):g} %" if target is not None else "target specificity"
        if budget is not None:
            words += f" (<= {budget:g} false positives per normal study)"
        return words + ("" if point.get("target_met", True) else ": target not met on validation")
    if rule == "youden":
        return "max. sensitivity + specificity"
    return f"fixed threshold: {point.get('note') or 'too few validation studies'}"


def _study_link(uid: str) -> str:
    return f'<a class="uid" href="/studies/{quote(uid)}">{escape(uid)}</a>'


def _options(values: Sequence[str], selected: str | None) -> str:
    items = ['<option value="">any</option>']
    items += [f'<option value="{escape(v)}"{" selected" if v == selected else ""}>{escape(v.replace("_", " "))}'
              '</option>' for v in values]
    return "".join(items)


def _filter_form(action: str, query: Mapping[str, str], *, statuses: Sequence[str], joints: bool,
                 ae: bool) -> str:
    def field(name: str, label: str, kind: str = "text") -> str:
        return (f'<label>{label}<input type="{kind}" name="{name}" value="{escape(query.get(name, ""))}">'
                '</label>')

    parts = [field("search", "Search (UID, description)"), field("since", "From", "date"),
             field("until", "To", "date"),
             f'<label>Status<select name="status">{_options(statuses, query.get("status"))}</select></label>']
    if joints:
        parts.append(f'<label>Joint<select name="joint">{_options(JOINTS, query.get("joint"))}</select></label>')
    if ae:
        parts.append(field("ae", "Sending AE"))
    csv_href = f"{action}.csv" + (f"?{urlencode(query)}" if query else "")
    parts.append(f'<button type="submit">Filter</button> <a href="{escape(csv_href)}">Export CSV</a>')
    return f'<form class="filters" method="get" action="{action}">{"".join(parts)}</form>'


def warnings_banner(warnings: Sequence[str]) -> str:
    """The node's configuration warnings as a banner list (empty when there are none)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return f'<div class="warnings" role="status"><strong>Configuration warnings</strong><ul>{items}</ul></div>'


def studies_page(rows: Sequence[dict[str, Any]], query: Mapping[str, str], *, user: str,
                 warnings: Sequence[str] = ()) -> str:
    head = ("<tr><th>Study</th><th>Description</th><th>Sender</th><th>Last received</th><th>Joint</th>"
            "<th>Status</th><th>Findings present</th><th>Model</th><th>Turnaround</th><th>Deliveries</th></tr>")
    lines = []
    for r in rows:
        findings = (escape(", ".join(r["findings_present"])) if r["findings_present"]
                    else ('none' if r["model_version"] else '<span class="muted">-</span>'))
        reasons = "".join(f'<div class="reason">{escape(x)}</div>' for x in r["failure_reasons"][:3])
        if r.get("storage"):
            reasons += f'<div class="reason storage">{escape(r["storage"])}</div>'
        lines.append(
            f'<tr><td>{_study_link(r["study_instance_uid"])}</td><td>{escape(r["study_description"] or "")}</td>'
            f'<td>{escape(", ".join(r["calling_aes"]))}</td><td>{_when(r["last_received_at"])}</td>'
            f'<td>{escape(r["joint"] or "-")} {escape(r["laterality"] or "")}</td><td>{_badge(r["status"])}'
            f'{reasons}</td><td>{findings}</td><td>{escape(r["model_version"] or "")}</td>'
            f'<td class="num">{_seconds(r["turnaround_seconds"])}</td><td class="num">{_delivery_counts(r)}</td>'
            '</tr>')
    empty = '<tr><td colspan="10" class="muted">No studies match.</td></tr>'
    body = (f'{warnings_banner(warnings)}<h1>Studies</h1>'
            f'{_filter_form("/studies", query, statuses=STATUSES, joints=True, ae=True)}'
            f'<p class="muted">{len(rows)} studies</p><table>{head}{"".join(lines) or empty}</table>')
    return page("Studies", body, user=user)


def _delivery_counts(row: dict[str, Any]) -> str:
    parts = [f"{row['delivered']} ok"]
    if row["pending"]:
        parts.append(f"{row['pending']} pending")
    if row["failed"]:
        parts.append(f"{row['failed']} failed")
    return " / ".join(parts)


def _status_code(value: int | None) -> str:
    return "" if value is None else f"0x{value:04X}"


def study_page(row: dict[str, Any], timeline: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
               deliveries: Sequence[dict[str, Any]], image_urls: Sequence[tuple[str, str]], *, user: str) -> str:
    uid = row["study_instance_uid"]
    facts = [("Study Instance UID", f'<span class="uid">{escape(uid)}</span>'),
             ("Description", escape(row["study_description"] or "")),
             ("Sending AE", escape(", ".join(row["calling_aes"]))), ("Instances", str(row["instance_count"])),
             ("Joint", f'{escape(row["joint"] or "-")} {escape(row["laterality"] or "")}'),
             ("Status", _badge(row["status"]))]
    if row.get("waiting"):
        facts.append(("Waiting for", f'<span class="reason">{escape(row["waiting"])}</span>'))
    if row.get("storage"):
        facts.append(("Storage", f'<span class="reason">{escape(row["storage"])}</span>'))
    facts += [("Ready because", escape(row["completeness_reason"] or "-")),
              ("Missing planes", escape(", ".join(row["missing_planes"]) or "none")),
              ("Turnaround", _seconds(row["turnaround_seconds"]))]
    if results:
        latest = results[0]
        facts.append(("Model", f'{escape(latest["model_name"])} {escape(latest["model_version"])}'))
    facts += [("Problem", f'<span class="reason">{escape(x)}</span>') for x in row["failure_reasons"]]
    body = [f'<h1>Study</h1><dl>{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>']
    if results and results[0]["findings"]:
        findings = "".join(
            f'<tr><td>{escape(f["label"])}</td><td>{_finding_badge(f["present"])}</td>'
            f'<td class="num">{100 * f["probability"]:.1f} %'
            f'</td><td class="num">{100 * f["threshold"]:.0f} %</td>'
            f'<td class="num">{_card_figure(f, "sensitivity", "positives")}</td>'
            f'<td class="num">{_card_figure(f, "specificity", "negatives")}</td>'
            f'<td>{escape(_operating_point(f.get("operating_point")))}</td></tr>' for f in results[0]["findings"])
        body.append('<h2>Findings</h2><table><tr><th>Label</th><th>Finding</th><th>Probability</th>'
                    '<th>Threshold</th><th>Sensitivity</th><th>Specificity</th><th>Operating point</th></tr>'
                    f'{findings}</table><p class="muted">Sensitivity and specificity: the model card\'s, at the '
                    'threshold, on its validation studies (n: positive / negative studies).</p>')
    if image_urls:
        images = "".join(f'<img src="{escape(url)}" alt="{escape(alt)}" width="440">' for url, alt in image_urls)
        body.append(f'<h2>Key images</h2><div class="images">{images}</div>')
    events = "".join(
        f'<tr><td>{_when(e["at"])}</td><td>{_badge(e["step"])}</td><td class="num">{e["job_id"] or ""}</td>'
        f'<td>{escape(e["detail"])}</td></tr>' for e in timeline)
    body.append(f'<h2>Timeline <a href="/studies/{quote(uid)}/timeline.csv" style="font-size:12px">CSV</a></h2>'
                f'<table><tr><th>When (UTC)</th><th>Step</th><th>Job</th><th>Detail</th></tr>{events}</table>')
    body.append("<h2>Deliveries</h2>" + _deliveries_table(deliveries, study_column=False))
    return page(f"Study {uid}", "".join(body), user=user)


def _deliveries_table(rows: Sequence[dict[str, Any]], *, study_column: bool = True) -> str:
    head = ("<tr>" + ("<th>Study</th>" if study_column else "") + "<th>Destination</th><th>Object</th><th>State</th>"
            "<th>Attempts</th><th>Last status</th><th>Queued</th><th>Delivered</th><th>Last error</th></tr>")
    lines = "".join(
        "<tr>" + (f'<td>{_study_link(r["study_instance_uid"])}</td>' if study_column else "")
        + f'<td>{escape(r["destination"])}</td><td>{escape(r["kind"])} <span class="uid muted">'
        f'{escape(r["sop_instance_uid"])}</span></td><td>{_badge(r["state"])}</td><td class="num">{r["attempts"]}</td>'
        f'<td>{_status_code(r["last_status"])}</td>'
        f'<td>{_when(r["queued_at"])}</td><td>{_when(r["delivered_at"])}</td>'
        f'<td class="reason">{escape(r["last_error"] or "") if r["state"] != "delivered" else ""}</td></tr>'
        for r in rows)
    cols = 9 if study_column else 8
    return f'<table>{head}{lines or f"<tr><td colspan={cols} class=muted>No deliveries.</td></tr>"}</table>'


def deliveries_page(rows: Sequence[dict[str, Any]], query: Mapping[str, str], *, user: str) -> str:
    form = _filter_form("/deliveries", query, statuses=("pending", "delivered", "failed"), joints=False, ae=False)
    return page("Deliveries", f"<h1>Deliveries</h1>{form}{_deliveries_table(rows)}", user=user)


def failures_page(rows: Sequence[dict[str, Any]], query: Mapping[str, str], *, user: str) -> str:
    form = _filter_form("/failures", query, statuses=("job_retry", "job_failed", "job_skipped", "delivery_failed"),
                        joints=False, ae=False)
    lines = "".join(f'<tr><td>{_when(r["at"])}</td><td>{_study_link(r["study_instance_uid"])}</td>'
                    f'<td>{_badge(r["step"])}</td><td>{escape(r["detail"])}</td></tr>' for r in rows)
    table = ('<table><tr><th>When (UTC)</th><th>Study</th><th>Step</th><th>Detail</th></tr>'
             f'{lines or "<tr><td colspan=4 class=muted>No failures.</td></tr>"}</table>')
    return page("Failures", f"<h1>Failures</h1>{form}{table}", user=user)


def summary_page(days: Sequence[dict[str, Any]], *, user: str) -> str:
    labels = [d["day"][5:] for d in days]
    charts = [
        bar_chart("Volumes per day", labels, {"studies": [d["studies"] for d in days],
                                              "result sets": [d["results"] for d in days]}),
        line_chart("Turnaround percentiles (last instance to last result acknowledged)", labels,
                   {f"p{q}": [d[f"turnaround_p{q}"] for d in days] for q in (50, 90, 95)}, unit=" s"),
        bar_chart("Failures per day", labels, {"failures": [d["failures"] for d in days]}),
        bar_chart("Instances received per day", labels, {"instances": [d["instances"] for d in days]}),
    ]
    head = ("<tr><th>Day</th><th>Studies</th><th>Instances</th><th>Result sets</th><th>Objects delivered</th>"
            "<th>Failures</th><th>Turnaround p50</th><th>p90</th><th>p95</th></tr>")
    lines = "".join(
        f'<tr><td>{escape(d["day"])}</td><td class="num">{d["studies"]}</td><td class="num">{d["instances"]}</td>'
        f'<td class="num">{d["results"]}</td><td class="num">{d["delivered"]}</td><td class="num">{d["failures"]}'
        f'</td>' + "".join(f'<td class="num">{_seconds(d[f"turnaround_p{q}"])}</td>' for q in (50, 90, 95))
        + "</tr>" for d in reversed(days))
    body = (f'<h1>Daily summary <a href="/summary.csv" style="font-size:12px">CSV</a></h1>'
            f'<div>{"".join(charts)}</div><table>{head}{lines}</table>')
    return page("Daily summary", body, user=user)


def error_page(status: int, message: str, *, user: str | None) -> str:
    return page(str(status), f"<h1>{status}</h1><p>{escape(message)}</p>", user=user)
