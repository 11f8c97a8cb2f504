"""The CLI commands end to end (DICOM TLS with real peers: tests/reliability/test_tls_peers.py)."""

from __future__ import annotations

import json
import subprocess
import sys


from ortho_node.app.cli.main import main
from tests.dicom_factory import mr_dataset, write
from tests.node_process import free_port


def test_cli_echo_send_studies(start_node, tmp_path, capsys, monkeypatch):
    node = start_node()
    address = f"ORTHODIFF@127.0.0.1:{node.scp.port}"
    assert main(["echo", address]) == 0
    folder = tmp_path / "study"
    for i in range(4):
        write(mr_dataset(study_uid="1.2.3.9", series_uid="1.2.3.9.1", seed=i, instance_number=i), folder / f"{i}.dcm")
    assert main(["send", str(folder), "--to", address]) == 0
    assert "sent 4 of 4" in capsys.readouterr().out
    (folder / "not-dicom.txt").write_text("hello")
    assert main(["send", str(folder), "--to", address]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main(["send", str(folder), "--to", f"WRONG@127.0.0.1:{node.scp.port}"]) == 1
    assert main(["echo", f"ORTHODIFF@127.0.0.1:{free_port()}"]) == 1
    assert main(["echo", "not-an-address"]) == 2
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", node.settings.database_url)
    capsys.readouterr()
    assert main(["studies", "--json"]) == 0
    [study] = json.loads(capsys.readouterr().out)
    assert study["study_instance_uid"] == "1.2.3.9" and study["instance_count"] == 4


def test_cli_subprocess_db_upgrade_and_help(tmp_path):
    env = {"ORTHO_NODE_STORAGE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "ortho_node.app.cli.main", "db", "upgrade"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    from ortho_node.db.migrations import head_revision

    assert f"database at revision {head_revision()}" in result.stdout
    assert (tmp_path / "data" / "ortho-node.db").is_file()
