"""Issue 22, item 6: ``ortho-node doctor`` against a running node, with its destination (dcmtk ``storescp`` on
loopback) up, then down; the listener's port free, used by the node, or taken by another program."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ortho_node.app.cli.main import main
from ortho_node.delivery.scu import RemoteNode, echo
from tests.conftest import dcmtk
from tests.node_process import free_port


@pytest.fixture
def storescp(tmp_path):
    """dcmtk's Storage SCP as the PACS, on a free loopback port; stopped at teardown."""
    port = free_port()
    folder = tmp_path / "pacs"
    folder.mkdir()
    process = subprocess.Popen([dcmtk("storescp"), "--aetitle", "PACS", "--output-directory", str(folder),
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while echo(RemoteNode("PACS", "127.0.0.1", port), calling_ae="PROBE", timeout=2) != 0:
        assert process.poll() is None and time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.1)
    yield process, port
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def _config(tmp_path: Path, dicom_port: int, pacs_port: int, *, model: bool = True) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nmin_free_mb = 0\n\n'
                    f'[dicom]\nhost = "127.0.0.1"\nport = {dicom_port}\n\n'
                    f'[model]\nenabled = {"true" if model else "false"}\n\n'
                    f'[[destinations]]\nname = "PACS"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n')
    return path


def _doctor(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["doctor", *argv])
    return code, capsys.readouterr().out


def _rows(out: str) -> dict[str, tuple[str, str]]:
    """The table's rows: check -> (status, detail)."""
    rows = {}
    for line in out.splitlines()[2:]:
        check, status, detail = re.fullmatch(r"(.+?) +(ok|warn|FAIL) +(.*)", line).groups()
        rows[check] = (status, detail)
    return rows


def test_doctor_passes_with_the_destination_up_and_fails_naming_it_when_down(start_node, storescp, tmp_path,
                                                                            capsys):
    process, pacs_port = storescp
    dicom_port = free_port()
    start_node(**{"dicom.port": dicom_port, "destinations": [f"PACS=PACS@127.0.0.1:{pacs_port}"]})
    config = _config(tmp_path, dicom_port, pacs_port)

    code, out = _doctor(capsys, "--config", str(config))
    assert code == 0, out
    checks = {c["check"]: c for c in json.loads(_doctor(capsys, "--config", str(config), "--json")[1])["checks"]}
    assert {name: c["status"] for name, c in checks.items()} == {
        "configuration": "ok", "database": "ok", "disk": "ok", "retention": "ok", "model": "ok", "gpu": "ok",
        "destination PACS": "ok", f"dicom port {dicom_port}": "ok"}
    assert "at revision" in checks["database"]["detail"] and "(head)" in checks["database"]["detail"]
    assert "weights sha256 matches the card" in checks["model"]["detail"]
    assert checks["destination PACS"]["detail"] == f"PACS@127.0.0.1:{pacs_port} answers C-ECHO from ORTHODIFF"
    assert checks[f"dicom port {dicom_port}"]["detail"] == "in use by a running node: ORTHODIFF answers C-ECHO"
    assert "destination PACS" in out and "FAIL" not in out

    process.terminate()
    process.wait(timeout=30)
    code, out = _doctor(capsys, "--config", str(config))
    assert code == 1
    [failed] = [line for line in out.splitlines() if "FAIL" in line]
    assert failed.startswith("destination PACS ") and f"PACS@127.0.0.1:{pacs_port}" in failed


def test_doctor_on_a_stopped_node_reports_the_free_port_and_warnings_without_failing(start_node, storescp,
                                                                                    tmp_path, capsys):
    _, pacs_port = storescp
    node = start_node(destinations=[f"PACS=PACS@127.0.0.1:{pacs_port}"])
    node.stop()
    dicom_port = free_port()
    config = _config(tmp_path, dicom_port, pacs_port, model=False)
    config.write_text(config.read_text().replace('host = "127.0.0.1"\nport = ' + str(dicom_port),
                                                 f'host = "0.0.0.0"\nport = {dicom_port}'))
    code, out = _doctor(capsys, "--config", str(config))
    assert code == 0, out
    rows = _rows(out)
    assert rows[f"dicom port {dicom_port}"][0] == "ok" and "free on 0.0.0.0" in rows[f"dicom port {dicom_port}"][1]
    assert rows["warning"][0] == "warn" and "any calling AE title is accepted" in rows["warning"][1]


def test_doctor_fails_when_another_program_holds_the_dicom_port_or_there_is_no_database(tmp_path, capsys,
                                                                                         storescp):
    _, pacs_port = storescp
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = _config(tmp_path, port, pacs_port, model=False)
        code, out = _doctor(capsys, "--config", str(config))
    assert code == 1
    rows = _rows(out)
    assert rows["database"][0] == "FAIL" and "no node database at" in rows["database"][1]
    assert rows[f"dicom port {port}"][0] == "FAIL" and "in use by another program" in rows[f"dicom port {port}"][1]
    assert not (tmp_path / "data").exists()  # the doctor creates nothing
