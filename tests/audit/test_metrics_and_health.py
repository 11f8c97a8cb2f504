"""Prometheus metrics (own registry) and the health check of a node that processed a study end to end."""

from __future__ import annotations

import json
import logging

import prometheus_client
import requests
from prometheus_client.parser import text_string_to_metric_families

from ortho_node.audit.prometheus import Liveness, health
from tests.assembly.factory import store
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, mr_dataset


def _samples(seeded) -> dict[tuple[str, tuple], float]:
    response = requests.get(f"{seeded.metrics_url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_from_the_database(seeded):
    samples = _samples(seeded)
    assert samples[("ortho_node_instances_received_total", ())] == 18
    assert samples[("ortho_node_studies_received_total", ())] == 1
    assert samples[("ortho_node_jobs", (("state", "succeeded"),))] == 1
    assert samples[("ortho_node_jobs", (("state", "pending"),))] == 0
    assert samples[("ortho_node_delivery_items", (("state", "delivered"),))] == 8
    assert samples[("ortho_node_delivery_failures_total", ())] == 8
    assert samples[("ortho_node_queue_depth", (("queue", "delivery"),))] == 0
    assert samples[("ortho_node_turnaround_seconds_count", ())] == 1
    assert samples[("ortho_node_turnaround_seconds_sum", ())] > 0
    assert samples[("ortho_node_inference_duration_seconds_count", ())] == 1
    assert samples[("ortho_node_job_duration_seconds_count", ())] == 1
    assert samples[("ortho_node_disk_free_bytes", ())] > 0
    assert samples[("ortho_node_health_check", (("check", "database"),))] == 1
    # a registry of its own: nothing of ours in prometheus_client's global one
    assert "ortho_node" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()


def test_health_endpoint_and_its_failures(seeded):
    response = requests.get(f"{seeded.metrics_url}/healthz", timeout=10)
    report = response.json()
    assert response.status_code == 200 and report["healthy"]
    assert set(report["checks"]) == {"database", "disk", "scheduler", "delivery", "storage_scp", "heartbeat"}
    assert requests.get(f"{seeded.metrics_url}/nothing", timeout=10).status_code == 404
    node = seeded.node
    stopped = health(node.session_factory, node.settings.data_dir, 0, Liveness(scheduler=lambda: False))
    assert not stopped["healthy"] and not stopped["checks"]["scheduler"]["ok"]
    full = health(node.session_factory, node.settings.data_dir, 2**62, Liveness())
    assert not full["checks"]["disk"]["ok"] and "watermark" in full["checks"]["disk"]["detail"]


def test_health_reports_an_unreachable_database(tmp_path):
    from sqlalchemy.orm import sessionmaker

    from ortho_node.db.engine import make_engine

    engine = make_engine("postgresql+psycopg://nobody:x@127.0.0.1:9/none")
    report = health(sessionmaker(engine), tmp_path, 0, Liveness())
    assert not report["healthy"] and report["checks"]["database"]["detail"].startswith("unreachable")


def test_json_logs_carry_no_patient_identifiers(start_node):
    import io

    from ortho_node.app.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    try:
        node = start_node(**{"scheduling.quiet_period": 0.0})
        store(node.scp.port, [mr_dataset(instance_number=k + 1) for k in range(3)])
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    text = stream.getvalue()
    assert str(PATIENT_NAME) not in text and str(PATIENT_ID) not in text
