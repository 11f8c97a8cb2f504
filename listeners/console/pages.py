"""Server-rendered HTML of the admin console from the Jinja2 templates in ``templates/`` (package data): one
self-contained page each, inline CSS and SVG, no external assets; one small script of our own (``console.js``,
served from the console's origin) reloads the lists. Autoescape is on: every value is escaped; only the charts
(``listeners.console.charts``, escaped where built) go in as markup.

Every page gets the signed-in user, the CSRF token of their session, whether they may act (an operator: the
action forms are shown) and the time zone times are shown in (``console.time_zone``, named on every time).

``listeners.console.routes`` serves them; each function returns the page as text, so it is tested without a
server."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from markupsafe import Markup

from ortho_node.audit.views import JOINTS, STATUSES
from ortho_node.cluster.registry import NodeStatus
from ortho_node.labels import DIAGNOSIS_NAMES
from listeners.console.charts import bar_chart, line_chart
from listeners.console.model_history import ModelOverview

NAV = (("/studies", "Studies"), ("/summary", "Daily summary"), ("/deliveries", "Deliveries"),
       ("/destinations", "Destinations"), ("/nodes", "Nodes"), ("/models", "Models"), ("/failures", "Failures"))
REFRESH_SECONDS = 30  # lists reload this often (console.js), unless the user is typing in a form
PAGE_SIZE = 100  # studies per page of the list
DELIVERY_STATES = ("pending", "delivered", "failed")
FAILURE_STEPS = ("job_retry", "job_failed", "job_skipped", "delivery_failed")


@functools.cache
def _zone(name: str) -> dt.tzinfo:
    return dt.timezone.utc if name == "UTC" else zoneinfo.ZoneInfo(name)


@pass_context
def _when(context: Any, value: dt.datetime | None) -> str:
    """A time in the console's zone, named ("2026-03-01 09:00:00 CET"); stored times are UTC (naive: UTC)."""
    if value is None:
        return ""
    utc = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return utc.astimezone(_zone(context.get("tz") or "UTC")).strftime("%Y-%m-%d %H:%M:%S %Z")


def _finding_name(label: str) -> str:
    """"medial meniscus tear (MM)": the full name with the model's abbreviation; the label alone if unknown."""
    name = DIAGNOSIS_NAMES.get(label)
    return f"{name} ({label})" if name else label


def _seconds(value: float | None) -> str:
    if value is None:
        return Markup('<span class="muted">-</span>')
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _status_code(value: int | None) -> str:
    return "" if value is None else f"0x{value:04X}"


def _delivery_counts(row: Mapping[str, Any]) -> str:
    parts = [f"{row['delivered']} ok"]
    if row["pending"]:
        parts.append(f"{row['pending']} pending")
    if row["failed"]:
        parts.append(f"{row['failed']} failed")
    return " / ".join(parts)


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


@functools.cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("listeners.console", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, seconds=_seconds, status_code=_status_code, delivery_counts=_delivery_counts,
                       card_figure=_card_figure, operating_point=_operating_point, finding_name=_finding_name,
                       urlquote=lambda value: quote(str(value), safe=""))
    env.globals.update(nav=NAV, all_joints=JOINTS, refresh_seconds=REFRESH_SECONDS)
    return env


def render(template: str, *, title: str, user: str | None, csrf: str = "", operator: bool = False,
           tz: str = "UTC", notice: str | None = None, refresh: bool = False, **context: Any) -> str:
    """A page; ``refresh``: a list that reloads itself (``console.js``)."""
    return environment().get_template(template).render(title=title, user=user, csrf=csrf, operator=operator, tz=tz,
                                                       notice=notice, refresh=refresh, **context)


def login_page(*, error: str | None = None, next_path: str = "/studies", csrf: str = "") -> str:
    return render("login.html", title="Sign in", user=None, csrf=csrf, error=error, next_path=next_path)


def warnings_banner(warnings: Sequence[str]) -> str:
    """The node's configuration warnings as a banner list (empty when there are none)."""
    return str(environment().get_template("macros.html").module.warnings_banner(list(warnings))).strip()


def studies_page(rows: Sequence[dict[str, Any]], query: Mapping[str, str], *, user: str,
                 warnings: Sequence[str] = (), offset: int = 0, more: bool = False, **frame: Any) -> str:
    """A page of the list; ``offset``: rows before it, ``more``: a next page exists."""
    return render("studies.html", title="Studies", user=user, rows=rows, query=dict(query), statuses=STATUSES,
                  warnings=list(warnings), offset=offset, more=more, page_size=PAGE_SIZE, refresh=True, **frame)


def study_page(row: dict[str, Any], timeline: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
               deliveries: Sequence[dict[str, Any]], image_urls: Sequence[tuple[str, str]], *, user: str,
               series: Mapping[str, Any] | None = None, destinations: Sequence[str] = (), **frame: Any) -> str:
    """``series``: ``audit.views.study_series`` (the series list, the chosen series per plane and why);
    ``destinations``: the names an operator may resend to."""
    return render("study.html", title=f"Study {row['study_instance_uid']}", user=user, row=row, timeline=timeline,
                  results=results, deliveries=deliveries, image_urls=image_urls,
                  series=(series or {}).get("series", []), assembly=(series or {}).get("assembly"),
                  destinations=list(destinations), **frame)


def deliveries_page(rows: Sequence[dict[str, Any]], query: Mapping[str, str], *, user: str, **frame: Any) -> str:
    return render("deliveries.html", title="Deliveries", user=user, rows=rows, query=dict(query),
                  statuses=DELIVERY_STATES, refresh=True, **frame)


def destinations_page(rows: Sequence[dict[str, Any]], *, user: str, **frame: Any) -> str:
    """Configured destinations (and ones only the queue still names) with their queues and pause state."""
    return render("destinations.html", title="Destinations", user=user, rows=rows, refresh=True, **frame)


def nodes_page(rows: Sequence[NodeStatus], *, user: str, **frame: Any) -> str:
    """The processes sharing the node's database (``ortho_node.cluster.registry``): live first, missed ones
    highlighted (their leases have expired and other processes took their work over)."""
    return render("nodes.html", title="Nodes", user=user, rows=rows, refresh=True, **frame)


def models_page(overview: ModelOverview, *, user: str, **frame: Any) -> str:
    """The served and shadow models, every imported one and the activation history
    (:mod:`listeners.console.model_history`)."""
    return render("models.html", title="Models", user=user, overview=overview, **frame)


def failures_page(rows: Sequence[dict[str, Any]], query: Mapping[str, str], *, user: str, **frame: Any) -> str:
    return render("failures.html", title="Failures", user=user, rows=rows, query=dict(query),
                  statuses=FAILURE_STEPS, refresh=True, **frame)


def summary_page(days: Sequence[dict[str, Any]], *, user: str, **frame: Any) -> str:
    labels = [d["day"][5:] for d in days]
    charts = [
        bar_chart("Volumes per day", labels, {"studies": [d["studies"] for d in days],
                                              "result sets": [d["results"] for d in days]},
                  integers=True),
        line_chart("Turnaround percentiles (last instance to last result acknowledged)", labels,
                   {f"p{q}": [d[f"turnaround_p{q}"] for d in days] for q in (50, 90, 95)}, unit=" s"),
        bar_chart("Failures per day", labels, {"failures": [d["failures"] for d in days]}, integers=True),
        bar_chart("Instances received per day", labels, {"instances": [d["instances"] for d in days]},
                  integers=True),
    ]
    return render("summary.html", title="Daily summary", user=user, days=days, refresh=True,
                  charts=[Markup(chart) for chart in charts], **frame)  # built and escaped by listeners.console.charts


def error_page(status: int, message: str, *, user: str | None, **frame: Any) -> str:
    return render("error.html", title=str(status), user=user, status=status, message=message, **frame)
