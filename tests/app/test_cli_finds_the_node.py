"""Issue 22, items 1 and 2: every command finds the node by ``--data-dir`` / ``--config`` like ``serve``; no
database means one line and exit 2 with nothing created; ``serve`` checks its ports, folder and database before
it loads the model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from ortho_node.app.checks import StartupError, check_ports, check_writable_folder
from ortho_node.app.cli.main import main
from ortho_node.db.models import Association
from ortho_node.delivery.scu import RemoteNode, send_files
from tests.conftest import REPO
from tests.dicom_factory import mr_dataset, write
from tests.node_process import free_port

STUDY_UID = "1.2.826.0.1.3680043.8.498.22001"
READERS = [["studies"], ["jobs"], ["deliveries"], ["reprocess", STUDY_UID], ["resend", STUDY_UID],
           ["audit", "studies"], ["audit", "deliveries"], ["audit", "failures"], ["audit", "summary"],
           ["audit", "timeline", STUDY_UID]]


@pytest.fixture
def no_node_env(monkeypatch):
    """A shell in which nothing points at a node: no ORTHO_NODE_* variable."""
    for name in [name for name in os.environ if name.startswith("ORTHO_NODE_")]:
        monkeypatch.delenv(name)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_NODE_")}


def _store_study(node, tmp_path: Path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / "study" / f"{i}.dcm"
        write(mr_dataset(study_uid=STUDY_UID, series_uid=f"{STUDY_UID}.1", seed=i, instance_number=i + 1), path)
        files.append(path)
    results = send_files(RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port), files, calling_ae="MR1")
    assert all(r.ok for r in results)


def test_readers_find_a_node_by_its_data_dir(start_node, tmp_path, capsys, no_node_env):
    node = start_node()
    _store_study(node, tmp_path)
    data = str(node.settings.data_dir)
    capsys.readouterr()
    assert main(["studies", "--data-dir", data]) == 0
    assert STUDY_UID in capsys.readouterr().out
    assert main(["studies", "--data-dir", data, "--json"]) == 0
    [study] = json.loads(capsys.readouterr().out)
    assert study["instance_count"] == 3
    assert main(["audit", "studies", "--data-dir", data]) == 0
    assert STUDY_UID in capsys.readouterr().out
    assert main(["jobs", "--data-dir", data]) == 0
    assert main(["deliveries", "--data-dir", data]) == 0
    assert main(["config", "show", "--data-dir", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"]["data_dir"] == data
    # --config names the same folder through the file, as the systemd unit's ORTHO_NODE_CONFIG does
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\ndata_dir = "{data}"\n')
    assert main(["audit", "timeline", STUDY_UID, "--config", str(config)]) == 0
    assert "first_received" in capsys.readouterr().out


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
def test_readers_in_an_empty_folder_say_so_and_create_nothing(argv, tmp_path, capsys, no_node_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, "--data-dir", str(empty / "data")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"error: no node database at {empty / 'data' / 'ortho-node.db'}: start `ortho-node "
                            "serve` or run `ortho-node db upgrade` (--data-dir / --config / ORTHO_NODE_CONFIG)\n")
    assert list(empty.iterdir()) == []


def test_studies_without_flags_in_an_empty_folder_as_a_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ortho_node.app.cli.main", "studies"], check=False,
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**_clean_env(), "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.startswith("error: no node database at ortho-node-data/ortho-node.db:")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_schema_is_no_node_database(database_url, tmp_path, capsys, no_node_env, monkeypatch):
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", database_url)
    if database_url.startswith("sqlite"):  # the fixture's file does not exist yet: make it, empty
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
        Path(database_url.removeprefix("sqlite:///")).touch()
    assert main(["jobs"]) == 2
    err = capsys.readouterr().err
    assert "no node database at" in err and "(no schema)" in err and len(err.splitlines()) == 1
    assert main(["db", "upgrade"]) == 0  # db upgrade makes it; then the readers find it
    assert main(["jobs"]) == 0


def test_an_unreachable_database_is_one_line(tmp_path, capsys, no_node_env, monkeypatch):
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", f"postgresql+psycopg://ortho:secret@127.0.0.1:{free_port()}/node")
    for argv in (["studies"], ["audit", "studies"], ["db", "upgrade"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot reach" in err and len(err.splitlines()) == 1
        assert "secret" not in err


def _serve(tmp_path: Path, port: int, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ortho_node.app.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**_clean_env(), "ORTHO_NODE_STORAGE_MIN_FREE_MB": "0", **env})
    return result, time.monotonic() - started


@pytest.mark.parametrize("key", ["dicom.port", "console.port", "metrics.port"])
def test_serve_on_a_port_in_use_stops_before_the_model(key, tmp_path):
    from listeners.console.passwords import hash_password

    with socket.create_server(("127.0.0.1", 0)) as taken:  # listening, as another server would be
        port = taken.getsockname()[1]
        env = {"ORTHO_NODE_CONSOLE_ENABLED": "true", "ORTHO_NODE_CONSOLE_PORT": "0",
               "ORTHO_NODE_CONSOLE_USERS": f"admin:{hash_password('long enough password')}",
               "ORTHO_NODE_METRICS_ENABLED": "true", "ORTHO_NODE_METRICS_PORT": "0"}
        section = key.split(".")[0]
        if section != "dicom":
            env[f"ORTHO_NODE_{section.upper()}_PORT"] = str(port)
        result, seconds = _serve(tmp_path, port if section == "dicom" else 0, **env)
    assert result.returncode == 2
    assert result.stderr == f"error: {key}: port {port} on 127.0.0.1 is already in use (another ortho-node or " \
                            "DICOM server?)\n"
    assert "loaded" not in result.stderr  # the model was not loaded
    assert not (tmp_path / "data").exists()  # nor the database migrated
    assert seconds < 30


def test_serve_on_an_unwritable_data_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "ortho_node.app.cli.main", "serve", "--port", "0", "--data-dir",
         str(tmp_path / "file" / "data")], check=False, capture_output=True, text=True, cwd=REPO, timeout=120,
        env=_clean_env())
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: storage.data_dir: folder {tmp_path / 'file' / 'data'} cannot be")
    assert len(result.stderr.splitlines()) == 1


def test_port_checks(make_settings, tmp_path):
    check_ports(make_settings())  # port 0 always passes
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"dicom.port: port {port} on 127.0.0.1 is already in use"):
            check_ports(make_settings(**{"dicom.port": port}))
    same = free_port()
    with pytest.raises(StartupError, match=f"metrics.port: port {same} is also dicom.port"):
        check_ports(make_settings(**{"dicom.port": same, "metrics.enabled": True, "metrics.port": same}))
    check_writable_folder(tmp_path / "a" / "b", "storage.data_dir")
    assert not (tmp_path / "a").exists()  # checked, then removed again


def test_send_and_echo_call_as_orthoscu_by_default(start_node, tmp_path, capsys):
    node = start_node()
    address = f"ORTHODIFF@127.0.0.1:{node.scp.port}"
    assert main(["echo", address]) == 0
    assert capsys.readouterr().out == f"C-ECHO to {address} as ORTHOSCU: status 0x0000\n"
    path = tmp_path / "one.dcm"
    write(mr_dataset(study_uid=STUDY_UID, series_uid=f"{STUDY_UID}.1"), path)
    assert main(["send", str(path), "--to", address]) == 0
    assert main(["send", str(path), "--to", address, "--aet", "MYSCU"]) == 0
    with node.session_factory() as session:
        callers = session.scalars(select(Association.calling_ae).order_by(Association.id)).all()
    assert callers == ["ORTHOSCU", "ORTHOSCU", "MYSCU"]
