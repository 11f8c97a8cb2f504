"""Prometheus metrics and the health check, read from the database at scrape time (own registry).

The database is the truth about received instances, jobs, results and deliveries, so every figure is
computed from it when scraped: counts survive restarts and agree with ``ortho-node audit``. Histograms
(job and inference durations, turnaround) are built from the stored timestamps.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.clock import as_utc
from ortho_node.db.models import DeliveryItem, Instance, Job, Study, StudyResult, TimelineEntry
from ortho_node.audit.timeline import FAILURE_STEPS, Step

log = logging.getLogger(__name__)

JOB_STATES = ("pending", "running", "succeeded", "skipped", "failed", "superseded")
DELIVERY_STATES = ("pending", "delivered", "failed")
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
TURNAROUND_BUCKETS = (5, 10, 20, 30, 45, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


@dataclass
class Liveness:
    """Callables the composition root hands over: is the scheduler running, is delivery running (None when
    no destination is configured)."""

    scheduler: Callable[[], bool] = lambda: True
    delivery: Callable[[], bool | None] = lambda: None
    extra: dict[str, Callable[[], bool]] = field(default_factory=dict)


def free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def health(session_factory: sessionmaker[Session], data_dir: Path, min_free_bytes: int,
           liveness: Liveness) -> dict[str, Any]:
    """{"healthy": bool, "checks": {name: {"ok": bool, "detail": str}}}: database reachable, disk above the
    watermark (storage.min_free_mb), scheduler and delivery running."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "detail": "reachable"}
    except SQLAlchemyError as exc:
        checks["database"] = {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    try:
        free = free_bytes(data_dir)
        checks["disk"] = {"ok": free >= min_free_bytes,
                          "detail": f"{free // 2**20} MiB free, watermark {min_free_bytes // 2**20} MiB"}
    except OSError as exc:
        checks["disk"] = {"ok": False, "detail": f"data folder unavailable ({type(exc).__name__})"}
    checks["scheduler"] = {"ok": bool(liveness.scheduler()), "detail": "running" if liveness.scheduler()
                           else "stopped"}
    delivery = liveness.delivery()
    checks["delivery"] = {"ok": delivery is not False,
                          "detail": {None: "no destination configured", True: "running", False: "stopped"}[delivery]}
    for name, probe in liveness.extra.items():
        ok = bool(probe())
        checks[name] = {"ok": ok, "detail": "running" if ok else "stopped"}
    return {"healthy": all(c["ok"] for c in checks.values()), "checks": checks}


class NodeCollector:
    """A prometheus_client collector over the node's database and data folder."""

    def __init__(self, session_factory: sessionmaker[Session], data_dir: Path, min_free_bytes: int,
                 liveness: Liveness | None = None,
                 nodes: Callable[[], Iterable[tuple[str, str]]] | None = None) -> None:
        """``nodes``: (role, state) of every process in the nodes table (``ortho_node.cluster.registry``), for the
        cluster gauge; states live, missed (heartbeats missed, leases expired) and stopped."""
        self._session_factory = session_factory
        self._data_dir = data_dir
        self._min_free_bytes = min_free_bytes
        self._liveness = liveness or Liveness()
        self._nodes = nodes

    def collect(self) -> Iterable[Any]:
        report = health(self._session_factory, self._data_dir, self._min_free_bytes, self._liveness)
        up = GaugeMetricFamily("ortho_node_health_check", "1 when the health check passes", labels=["check"])
        for name, check in report["checks"].items():
            up.add_metric([name], 1.0 if check["ok"] else 0.0)
        yield up
        try:
            yield GaugeMetricFamily("ortho_node_disk_free_bytes", "Free bytes on the data folder's file system",
                                    value=free_bytes(self._data_dir))
        except OSError:
            pass
        if not report["checks"]["database"]["ok"]:
            return
        try:
            with self._session_factory() as session:
                yield from self._from_database(session)
            if self._nodes is not None:
                yield _nodes_gauge(self._nodes())
        except SQLAlchemyError as exc:
            log.error("metrics: database query failed (%s)", type(exc).__name__)

    def _from_database(self, session: Session) -> Iterable[Any]:
        instances, received_bytes = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.file_size), 0))).one()
        yield CounterMetricFamily("ortho_node_instances_received", "Instances stored", value=instances)
        yield CounterMetricFamily("ortho_node_received_bytes", "Bytes of instances stored", value=received_bytes)
        yield CounterMetricFamily("ortho_node_studies_received", "Studies with at least one stored instance",
                                  value=session.scalar(select(func.count(Study.id))))
        yield _by_state("ortho_node_jobs", "Processing jobs by state", "state", JOB_STATES,
                        session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
        yield _by_state("ortho_node_delivery_items", "Result objects in the delivery queue by state", "state",
                        DELIVERY_STATES, session.execute(select(DeliveryItem.state, func.count(DeliveryItem.id))
                                                         .group_by(DeliveryItem.state)).all())
        depth = GaugeMetricFamily("ortho_node_queue_depth", "Work waiting: pending jobs and pending deliveries",
                                  labels=["queue"])
        depth.add_metric(["jobs"], session.scalar(select(func.count(Job.id)).where(Job.state == "pending")))
        depth.add_metric(["delivery"], session.scalar(select(func.count(DeliveryItem.id))
                                                      .where(DeliveryItem.state == "pending")))
        yield depth
        failures = CounterMetricFamily("ortho_node_failures", "Failed steps by kind (job retries and failures, "
                                       "skipped studies, flagged deliveries)", labels=["step"])
        counts = dict(session.execute(select(TimelineEntry.step, func.count(TimelineEntry.id)).where(
            TimelineEntry.step.in_([s.value for s in FAILURE_STEPS])).group_by(TimelineEntry.step)).all())
        for step in FAILURE_STEPS:
            failures.add_metric([step.value], counts.get(step.value, 0))
        yield failures
        yield CounterMetricFamily("ortho_node_delivery_failures", "Result objects flagged as undeliverable",
                                  value=counts.get(Step.DELIVERY_FAILED.value, 0))
        jobs = session.execute(select(Job.started_at, Job.finished_at).where(
            Job.finished_at.is_not(None), Job.started_at.is_not(None))).all()
        yield _histogram("ortho_node_job_duration_seconds", "Job run time (claim to finish)",
                         [(as_utc(end) - as_utc(start)).total_seconds() for start, end in jobs], DURATION_BUCKETS)
        inference = session.execute(select(StudyResult.inference_started_at, StudyResult.inference_finished_at)
                                    .where(StudyResult.inference_finished_at.is_not(None),
                                           StudyResult.inference_started_at.is_not(None))).all()
        yield _histogram("ortho_node_inference_duration_seconds", "Predictor run time per study",
                         [(as_utc(end) - as_utc(start)).total_seconds() for start, end in inference], DURATION_BUCKETS)
        yield _histogram("ortho_node_turnaround_seconds", "Last instance received to last result acknowledged, "
                         "per study whose results are all delivered", _turnarounds(session), TURNAROUND_BUCKETS)


NODE_STATES = ("live", "missed", "stopped")
NODE_ROLES = ("all", "receive", "process")


def _nodes_gauge(nodes: Iterable[tuple[str, str]]) -> GaugeMetricFamily:
    """Processes sharing the database by role and state; ``state="missed"`` above 0 is the alert: a process
    stopped beating without stopping (its leases expired, its work is being taken over)."""
    family = GaugeMetricFamily("ortho_node_cluster_nodes", "Node processes in the nodes table by role and state "
                               "(missed: heartbeats missed, leases expired)", labels=["role", "state"])
    counts: dict[tuple[str, str], int] = {}
    for role, state in nodes:
        counts[(role, state)] = counts.get((role, state), 0) + 1
    for role in NODE_ROLES:
        for state in NODE_STATES:
            family.add_metric([role, state], counts.pop((role, state), 0))
    for (role, state), count in sorted(counts.items()):
        family.add_metric([role, state], count)
    return family


def _turnarounds(session: Session) -> list[float]:
    rows = session.execute(
        select(Study.last_received_at, func.max(DeliveryItem.delivered_at),
               func.sum(case((DeliveryItem.state == "pending", 1), else_=0)))
        .join(DeliveryItem, DeliveryItem.study_instance_uid == Study.study_instance_uid)
        .group_by(Study.id, Study.last_received_at)).all()
    return [(as_utc(acked) - as_utc(received)).total_seconds() for received, acked, pending in rows
            if acked is not None and not pending]


def _by_state(name: str, documentation: str, label: str, known: Sequence[str], rows) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    counts = dict(rows)
    for state in list(known) + sorted(set(counts) - set(known)):
        family.add_metric([state], counts.get(state, 0))
    return family


def _histogram(name: str, documentation: str, values: Sequence[float], buckets: Sequence[float]):
    family = HistogramMetricFamily(name, documentation)
    cumulative = [(str(float(b)), sum(1 for v in values if v <= b)) for b in buckets]
    cumulative.append(("+Inf", len(values)))
    family.add_metric([], cumulative, sum_value=float(sum(values)))
    return family


def make_registry(collector: NodeCollector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one), holding the node collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
