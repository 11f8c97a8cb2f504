"""The validation report of ``train evaluate``: ``report.json`` (every figure and each study's prediction, by
hashed key) and ``report.html``, one self-contained page whose plots (ROC curves, reliability diagram, Dice per
structure, AUC per scanner and field strength) are PNG data URIs drawn with matplotlib.

matplotlib is used through its object API (``Figure`` + the Agg canvas), never ``pyplot``: no global state,
no display backend, nothing left open between plots.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ortho_node.training.evaluation import StudyRecord, known_pairs, finite

TEMPLATES = Path(__file__).parent / "templates"
REPORT_HTML, REPORT_JSON = "report.html", "report.json"
PLOTS = ("roc", "reliability", "dice", "breakdown")


def roc_points(scores: np.ndarray, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    scores, truths = scores[order], truths[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last study of each distinct score
    tp, fp = np.cumsum(truths)[last], np.cumsum(~truths)[last]
    return np.r_[0, fp / max(1, (~truths).sum())], np.r_[0, tp / max(1, truths.sum())]


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.0, height: float = 4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def roc_plot(records: Sequence[StudyRecord], auc: Mapping[str, Mapping]) -> str:
    figure = _figure(6, 5.5)
    axes = figure.add_subplot()
    for label, figures in auc.items():
        scores, truths = known_pairs(records, label)
        if figures["positives"] and figures["negatives"]:
            fpr, tpr = roc_points(scores, truths)
            axes.plot(fpr, tpr, drawstyle="steps-post", label=f"{label} {figures['auc']:.2f}")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC per finding (AUC)", xlim=(0, 1), ylim=(0, 1))
    if axes.get_legend_handles_labels()[0]:  # no curve where no finding has both positives and negatives
        axes.legend(loc="lower right", fontsize="small")
    return _png(figure)


def reliability_plot(calibration: Mapping) -> str:
    figure = _figure()
    axes = figure.add_subplot()
    bins = [b for b in calibration["bins"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    axes.bar(centres, [b["observed"] for b in bins], width=0.09, alpha=0.6, label="observed share positive")
    axes.plot([b["mean_probability"] for b in bins], [b["observed"] for b in bins], "o-", label="by mean probability")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    axes.set(xlabel="predicted probability", ylabel="observed share positive", xlim=(0, 1), ylim=(0, 1),
             title=f"Reliability ({calibration['pairs']} study-finding pairs)")
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


def dice_plot(dice: Mapping[str, Mapping]) -> str:
    figure = _figure(7, 4.5)
    axes = figure.add_subplot()
    names = [n for n, d in dice.items() if d["series"]]
    axes.barh(names, [dice[n]["dice"] for n in names])
    axes.set(xlim=(0, 1), xlabel="Dice (mean over masked series)", title="Dice per structure")
    axes.invert_yaxis()
    return _png(figure)


def breakdown_plot(breakdown: Mapping[str, Mapping[str, Mapping]]) -> str:
    figure = _figure(9, 4)
    for k, (name, groups) in enumerate(breakdown.items(), start=1):
        axes = figure.add_subplot(1, len(breakdown), k)
        values = [np.nan_to_num(g["macro_auc"], nan=0.0) for g in groups.values()]
        axes.barh([f"{g} (n={v['studies']})" for g, v in groups.items()], values)
        axes.set(xlim=(0, 1), xlabel="macro AUC", title=f"by {name.replace('_', ' ')}")
    figure.tight_layout()
    return _png(figure)


def plots(records: Sequence[StudyRecord], figures: Mapping) -> dict[str, str]:
    """Plot name -> PNG data URI (no Dice plot without masks)."""
    drawn = {"roc": roc_plot(records, figures["auc"]), "reliability": reliability_plot(figures["calibration"]),
             "breakdown": breakdown_plot(figures["breakdown"])}
    if figures["dice"]:
        drawn["dice"] = dice_plot(figures["dice"])
    return drawn


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_report(out: Path, records: Sequence[StudyRecord], figures: Mapping, about: Mapping) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` in ``out``; ``about``: the model and the data (no identifiers)."""
    out.mkdir(parents=True, exist_ok=True)
    document = finite({**about, "figures": figures, "predictions": [r.to_dict() for r in records]})
    json_path = out / REPORT_JSON
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    environment.globals["fmt"] = _number
    page = environment.get_template("evaluation_report.html").render(
        about=about, figures=finite(figures), plots=plots(records, figures))
    html_path = out / REPORT_HTML
    html_path.write_text(page, encoding="utf-8")
    return html_path, json_path
