"""Issue 26: the node's model registry. Models imported (verified, copied, recorded), activated and rolled back
with who and when, audited; a set ``model.path`` refuses activation; a running ``ortho-node serve`` takes each
activation at its next study and records the model with the results."""

from __future__ import annotations

import json
import time

import pytest

from ortho_node.app.cli.main import main
from ortho_node.app.node import load_predictor
from ortho_node.config import BUNDLED_MODEL, load_settings
from ortho_node.db.models import ModelActivation, Node, RegisteredModel, ShadowResult, StudyResult
from tests.app.model_registry_helpers import FAST, _cli, _events, _rows
from tests.assembly.factory import store, study
from tests.node_process import NodeProcess


@pytest.fixture(autouse=True)
def _no_node_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("ORTHO_NODE_")]:
        monkeypatch.delenv(name)


def test_import_verifies_copies_and_records_the_model(data_dir, models, capsys):
    assert _cli(data_dir, "import", str(models["dept-a"]), "--by", "dr-lee") == 0
    [row] = _rows(data_dir, RegisteredModel)
    card = json.loads((models["dept-a"] / "model_card.json").read_text())
    assert (row.name, row.version, row.imported_by) == ("Department knee", "dept-a", "dr-lee")
    assert row.weights_sha256 == card["weights_sha256"] and row.card["version"] == "dept-a"
    copy = data_dir / row.folder
    assert copy.parent == data_dir / "models"
    assert (copy / "model.safetensors").read_bytes() == (models["dept-a"] / "model.safetensors").read_bytes()
    assert _events(data_dir) == [("model_imported", "model #1 Department knee dept-a imported by dr-lee")]
    capsys.readouterr()
    assert _cli(data_dir, "import", str(models["dept-a"])) == 2  # the same card and weights again
    assert "already imported as model #1 (Department knee dept-a)" in capsys.readouterr().err
    assert len(_rows(data_dir, RegisteredModel)) == 1


def test_import_refuses_altered_weights_and_folders_without_a_card(data_dir, models, tmp_path, capsys):
    import shutil

    altered = tmp_path / "altered"
    shutil.copytree(models["dept-b"], altered)
    with (altered / "model.safetensors").open("r+b") as stream:
        stream.seek(-4, 2)
        stream.write(b"\0\0\0\1")
    assert _cli(data_dir, "import", str(altered)) == 2
    assert "not a usable task model" in (err := capsys.readouterr().err) and "sha256" in err
    (tmp_path / "empty").mkdir()
    assert _cli(data_dir, "import", str(tmp_path / "empty")) == 2
    assert "no model_card.json" in capsys.readouterr().err
    assert _rows(data_dir, RegisteredModel) == [] and not list((data_dir / "models").glob("*"))


def test_activate_and_rollback_stack_record_who_and_when(data_dir, models, capsys):
    for version in ("dept-a", "dept-b"):
        assert _cli(data_dir, "import", str(models[version]), "--by", "physicist") == 0
    assert _cli(data_dir, "activate", "1", "--by", "dr-lee") == 0
    assert _cli(data_dir, "activate", "Department knee@dept-b", "--by", "dr-kim") == 0
    capsys.readouterr()
    assert _cli(data_dir, "activate", "2") == 2
    assert "#2 Department knee dept-b is already the active model" in capsys.readouterr().err
    assert _cli(data_dir, "rollback", "--by", "dr-lee") == 0  # back to dept-a
    assert _cli(data_dir, "rollback", "--by", "dr-lee") == 0  # back to the bundled model
    capsys.readouterr()
    assert _cli(data_dir, "rollback") == 2
    assert "nothing to roll back" in capsys.readouterr().err
    rows = _rows(data_dir, ModelActivation)
    assert [(r.model_id, r.action, r.by) for r in rows] == [
        (1, "activate", "dr-lee"), (2, "activate", "dr-kim"), (1, "rollback", "dr-lee"), (None, "rollback", "dr-lee")]
    assert all(r.at is not None for r in rows)
    assert [kind for kind, _ in _events(data_dir)][2:] == ["model_activated", "model_activated",
                                                          "model_rolled_back", "model_rolled_back"]
    assert _events(data_dir)[-1][1].startswith("dr-lee rolled back to model bundled ")
    assert _cli(data_dir, "list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"]["id"] is None and listing["pinned"] is None
    assert [m["version"] for m in listing["models"]][1:] == ["dept-a", "dept-b"]
    assert [(h["action"], h["model"]["version"], h["by"]) for h in listing["history"]][:2] == [
        ("rollback", json.loads((BUNDLED_MODEL / "model_card.json").read_text())["version"], "dr-lee"),
        ("rollback", "dept-a", "dr-lee")]


def test_activation_by_the_operating_system_user(data_dir, models, monkeypatch):
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: "radiographer")
    assert _cli(data_dir, "import", str(models["dept-a"])) == 0
    assert _cli(data_dir, "activate", "1") == 0
    assert [r.by for r in _rows(data_dir, ModelActivation)] == ["radiographer"]


def test_a_set_model_path_pins_the_model_and_activation_is_refused(data_dir, models, monkeypatch, capsys):
    assert _cli(data_dir, "import", str(models["dept-a"])) == 0
    monkeypatch.setenv("ORTHO_NODE_MODEL_PATH", str(models["dept-b"]))
    capsys.readouterr()
    assert _cli(data_dir, "activate", "1") == 2
    assert f"model.path is set ({models['dept-b']}): it pins the model" in capsys.readouterr().err
    assert _cli(data_dir, "rollback") == 2
    assert _rows(data_dir, ModelActivation) == []
    assert _cli(data_dir, "list") == 0
    assert f"model.path pins {models['dept-b']}" in capsys.readouterr().out


def _results(data_dir, count: int, timeout: float = 240.0) -> list[StudyResult]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(data_dir, StudyResult)
        if len(rows) >= count:
            return rows
        time.sleep(0.3)
    raise AssertionError(f"{count} result sets not built in {timeout} s")


def test_a_running_node_takes_each_activation_at_its_next_study(data_dir, models):
    for version in ("dept-a", "dept-b"):
        assert _cli(data_dir, "import", str(models[version])) == 0
    assert _cli(data_dir, "activate", "1", "--by", "dr-lee") == 0
    node = NodeProcess(data_dir, extra_env=FAST)
    try:
        uid, planes = study()
        store(node.port, [ds for group in planes for ds in group])
        assert [r.model_version for r in _results(data_dir, 1)] == ["dept-a"]
        assert [n.model_version for n in _rows(data_dir, Node)] == ["dept-a"]
        assert _cli(data_dir, "activate", "2", "--by", "dr-kim") == 0
        assert main(["reprocess", uid, "--data-dir", str(data_dir)]) == 0
        assert [r.model_version for r in _results(data_dir, 2)] == ["dept-a", "dept-b"]
        assert [n.model_version for n in _rows(data_dir, Node)] == ["dept-b"]  # the nodes table follows
        assert _cli(data_dir, "rollback", "--by", "dr-lee") == 0
        assert main(["reprocess", uid, "--data-dir", str(data_dir)]) == 0
        assert [r.model_version for r in _results(data_dir, 3)] == ["dept-a", "dept-b", "dept-a"]
        assert [n.model_version for n in _rows(data_dir, Node)] == ["dept-a"]
    finally:
        node.stop()
    loaded = [message for kind, message in _events(data_dir) if kind == "model_loaded"]
    assert loaded == ["model #1 Department knee dept-a loaded at start-up",
                      "model #2 Department knee dept-b loaded for the next study (was #1 Department knee dept-a)",
                      "model #1 Department knee dept-a loaded for the next study (was #2 Department knee dept-b)"]
    assert all(r.model_name == "Department knee" for r in _rows(data_dir, StudyResult))


def test_a_fresh_node_records_the_model_it_loads_at_start_up(tmp_path):
    # serve loads its model before the node migrates: the registry's tables and the audit trail must exist then.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(data_dir), "model.device": "cpu"})
    load_predictor(settings).predictor.close()
    assert [kind for kind, _ in _events(data_dir)] == ["model_loaded"]


def test_the_console_models_page_shows_the_served_model_the_shadows_agreement_and_every_change(data_dir, models):
    import requests

    from listeners.console.passwords import hash_password
    from listeners.console.routes import Console, console_app
    from listeners.web.listener import WebListener
    from ortho_node.audit.trail import AuditTrail
    from ortho_node.db.engine import make_engine, make_session_factory
    from ortho_node.model.registry import ModelRegistry
    from tests.console.forms import login

    for version in ("dept-a", "dept-b"):
        assert _cli(data_dir, "import", str(models[version]), "--by", "physicist") == 0
    assert _cli(data_dir, "activate", "2", "--by", "dr-kim") == 0
    assert _cli(data_dir, "rollback", "--by", "dr-lee") == 0
    assert _cli(data_dir, "activate", "1", "--by", "dr-lee") == 0
    assert _cli(data_dir, "shadow", "2", "--by", "dr-kim") == 0
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(data_dir),
                                                    "console.users": [f"ann:{hash_password('a long password')}"]})
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:  # two studies the shadow ran on, as inference.shadow records them
        for both, calls in ((80, (True, False)), (90, (True, True))):
            session.add(ShadowResult(
                study_instance_uid="1.2.3", model_name="Department knee", model_version="dept-b",
                active_model_version="dept-a", findings=[], objects=[],
                agreement={"structures": {"femur": [both, 100, 100]},
                           "findings": {"MM": {"active": 0.7, "shadow": 0.6, "active_present": calls[0],
                                               "shadow_present": calls[1]}}}))
    console = Console(settings.console, sessions, AuditTrail(sessions),
                      models=ModelRegistry.for_settings(settings, sessions))
    web = WebListener(console_app(console), "127.0.0.1", 0, name="console")
    web.start()
    try:
        browser = requests.Session()
        assert login(browser, f"http://127.0.0.1:{web.port}", "ann", "a long password").status_code == 200
        page = browser.get(f"http://127.0.0.1:{web.port}/models", timeout=10)
    finally:
        web.stop()
    assert page.status_code == 200 and '<a href="/models">Models</a>' in page.text
    served = page.text.split("<dt>Served</dt>")[1].split("</dd>")[0]
    shadow = page.text.split("<dt>Shadow</dt>")[1].split("</dd>")[0]
    assert "#1 Department knee dept-a" in served and "#2 Department knee dept-b" in shadow
    bundled = json.loads((BUNDLED_MODEL / "model_card.json").read_text())
    imported = page.text.split("<h2>Imported models</h2>")[1].split("</table>")[0]
    rows = imported.split("<tr>")[2:]  # after the header: bundled, #1, #2
    assert rows[0].startswith(f"<td>bundled {bundled['name']}</td><td>{bundled['version']}</td>")
    assert rows[1].startswith("<td>#1 Department knee</td><td>dept-a</td>") and "by physicist" in rows[1]
    assert f"knee-seg mean Dice {bundled['metrics']['knee-seg/test/score']:.2f}" in rows[0]  # the card's figure
    assert 'badge delivered">active' in rows[1] and ">shadow<" in rows[2] and "active" not in rows[0] + rows[2]
    assert json.loads((models["dept-a"] / "model_card.json").read_text())["weights_sha256"][:16] in rows[1]
    agreement = page.text.split("<h2>Shadow Department knee dept-b beside dept-a</h2>")[1].split("<h2>")[0]
    assert "2 studies analysed by both" in agreement
    assert '<td>femur</td><td class="num">0.850</td><td class="num">0.850</td><td class="num">2</td>' in agreement
    assert ('<tr class="missed"><td>medial meniscus tear (MM)</td><td class="num">1</td><td class="num">2</td>'
            '<td class="num">1</td><td class="num">2</td>') in agreement
    history = page.text.split("<h2>History</h2>")[1].split("</table>")[0]
    changes = [[cell.split(">", 1)[1] for cell in row.split("</td>")[1:4]] for row in history.split("<tr>")[2:]]
    assert changes == [["activated", "#1 Department knee dept-a", "dr-lee"],
                       ["rolled back to", f"bundled {bundled['name']} {bundled['version']}", "dr-lee"],
                       ["activated", "#2 Department knee dept-b", "dr-kim"]]
