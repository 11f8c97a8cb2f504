"""deploy/: the Kubernetes manifests against the Kubernetes schemas (``kubernetes-validate``, offline, strict: an
unknown field fails) and the compose file against the Compose Specification's schema (vendored in tests/data),
plus what the scale-out set-up needs of them (roles, shared volume, GPU requests, the receivers' TCP Service)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
KUBERNETES = "1.30.0"  # the oldest Kubernetes the manifests are meant for


def _documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind_and_name() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in _documents()}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid_against_the_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_wrong_field_is_caught_by_the_same_validation():
    deployment = _by_kind_and_name()[("Deployment", "ortho-node-processor")]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_receivers_behind_a_tcp_service_processors_with_gpus_sharing_one_volume():
    docs = _by_kind_and_name()
    receiver, processor = docs[("Deployment", "ortho-node-receiver")], docs[("Deployment", "ortho-node-processor")]
    service = docs[("Service", "ortho-node-dicom")]
    assert service["spec"]["selector"] == receiver["spec"]["template"]["metadata"]["labels"]
    assert [(p["port"], p["protocol"]) for p in service["spec"]["ports"]] == [(104, "TCP")]
    containers = {name: d["spec"]["template"]["spec"]["containers"][0] for name, d in
                  (("receive", receiver), ("process", processor))}
    for role, container in containers.items():
        assert container["args"] == ["serve", "--role", role]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in
                  (receiver if role == "receive" else processor)["spec"]["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {"ortho-node-data"}
    assert containers["process"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in containers["receive"]["resources"].get("limits", {})
    assert docs[("PersistentVolumeClaim", "ortho-node-data")]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert ("StatefulSet", "ortho-node-db") in docs


def test_compose_file_is_valid_against_the_compose_schema_and_scales_processors():
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))  # the schema's own draft
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    validator.validate(compose)
    services = compose["services"]
    assert services["receiver"]["command"] == ["serve", "--role", "receive"]
    assert services["processor"]["command"] == ["serve", "--role", "process"]
    # --scale processor=3 needs a service without a fixed container name or published host ports
    assert "container_name" not in services["processor"] and "ports" not in services["processor"]
    for role in ("receiver", "processor"):
        assert services[role]["environment"]["ORTHO_NODE_DATABASE_URL"].startswith("postgresql")
        assert "node-data:/var/lib/ortho-node" in services[role]["volumes"]
    broken = {**compose, "services": {**services, "processor": {**services["processor"], "replica": 3}}}
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        validator.validate(broken)
