"""Settings: defaults, TOML file, environment, flags, and errors that name the bad key."""

from __future__ import annotations

import json
import os

import pytest

from ortho_node.app.cli.main import main
from ortho_node.config import ConfigError, load_settings


def test_defaults_need_no_file():
    settings = load_settings(environ={})
    assert settings.dicom.ae_title == "ORTHODIFF"
    assert settings.dicom.port == 11112
    assert settings.storage.data_dir == "./ortho-node-data"
    assert settings.database_url == "sqlite:///ortho-node-data/ortho-node.db"


def test_precedence_file_env_flags(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('[dicom]\nae_title = "FROMFILE"\nport = 2000\nmax_associations = 3\n')
    settings = load_settings(config, environ={"ORTHO_NODE_DICOM_PORT": "3000"},
                             overrides={"dicom.ae_title": "FROMFLAG"})
    assert (settings.dicom.ae_title, settings.dicom.port, settings.dicom.max_associations) == ("FROMFLAG", 3000, 3)


@pytest.mark.parametrize("content, message", [
    ("[dicom]\nprot = 1\n", "dicom.prot"),
    ("[dicom]\nport = 70000\n", "dicom.port in"),
    ('[dicom]\nport = "x"\n', "expected int"),
    ('[dicom]\nae_title = "A\\\\B"\n', "not a valid AE title"),
    ("[nonsense]\nx = 1\n", "unknown section [nonsense]"),
    ('[logging]\nlevel = "LOUD"\n', "logging.level"),
    ("[tls]\nenabled = true\n", "tls.certificate"),
    ('[database]\nurl = "mysql://x"\n', "database.url"),
    ("[dicom\n", "not valid TOML"),
    ("[model]\nbatch_studies = 4\n[scheduling]\nconcurrency = 2\n", "batch_studies .4. is above scheduling.concurrency"),
    ("[model]\nwindow_batch = 0\n", "model.window_batch"),
])
def test_bad_file_values_name_the_key(tmp_path, content, message):
    config = tmp_path / "node.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(config, environ={})


def test_bad_environment_names_the_variable():
    with pytest.raises(ConfigError, match="ORTHO_NODE_DICOM_PORT"):
        load_settings(environ={"ORTHO_NODE_DICOM_PORT": "eleven"})
    with pytest.raises(ConfigError, match="ORTHO_NODE_STORAGE_DATADIR"):
        load_settings(environ={"ORTHO_NODE_STORAGE_DATADIR": "/x"})


def test_config_show_prints_effective_settings(monkeypatch, capsys):
    monkeypatch.setenv("ORTHO_NODE_DICOM_AE_TITLE", "ENVAE")
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", "postgresql+psycopg://user:secret@db/ortho")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert 'dicom.ae_title = "ENVAE"' in out
    assert "secret" not in out.split("# effective database URL:")[1]
    assert main(["config", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dicom"]["port"] == 11112


def test_cli_reports_config_errors(monkeypatch, capsys):
    monkeypatch.setenv("ORTHO_NODE_DICOM_PORT", "-5")
    assert main(["config", "show"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ORTHO_NODE_DICOM_PORT: must be at least 0" in captured.err


def test_deployment_example_configuration_is_valid():
    from tests.conftest import REPO

    settings = load_settings(REPO / "deploy" / "node.example.toml", environ={})
    assert settings.logging.format == "json"
    assert "PACS@10.10.0.5" in settings.dicom.allowed_calling_aets
    assert settings.model.enabled and settings.model_path.name == "bundled" and settings.model.device == "auto"
    assert [(d.name, d.ae_title, d.port) for d in settings.destinations] == [("PACS", "MAINPACS", 104)]
    assert settings.dicom.workers == 2 and settings.dicomweb.own_listener and settings.dicomweb.workers == 2


def test_dicom_workers_zero_means_two_processes_where_two_cores_are_usable(monkeypatch):
    from ortho_node.config import schema

    assert 1 <= schema.usable_cores() <= (os.cpu_count() or 1)
    dicom = load_settings(environ={}).dicom
    assert dicom.workers == 0
    for cores, processes in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(schema, "usable_cores", lambda cores=cores: cores)
        assert dicom.receiving_processes == processes
    for workers in (1, 3):
        assert load_settings(environ={}, overrides={"dicom.workers": workers}).dicom.receiving_processes == workers


def test_dicomweb_workers_zero_means_two_processes_on_a_listener_of_its_own_where_two_cores_are_usable(monkeypatch):
    from ortho_node.config import schema

    console_port = load_settings(environ={}).dicomweb
    own = load_settings(environ={}, overrides={"dicomweb.own_listener": True}).dicomweb
    assert console_port.workers == own.workers == 0
    for cores, processes in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(schema, "usable_cores", lambda cores=cores: cores)
        assert own.serving_processes == processes
        assert console_port.serving_processes == 1  # the console's port is served by the node's own process
    settings = load_settings(environ={}, overrides={"dicomweb.own_listener": True, "dicomweb.workers": 3})
    assert settings.dicomweb.serving_processes == 3


def test_usable_cores_keep_to_a_containers_cpu_quota(tmp_path, monkeypatch):
    from ortho_node.config import schema

    def limit(membership: str, files: dict[str, str]) -> float | None:
        root = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (root / "self.cgroup").write_text(membership)
        return schema.cgroup_cpu_limit(root, root / "self.cgroup")

    # cgroup v2: the process's group and its parents; the tightest wins; "max" is no limit.
    assert limit("0::/kubepods/pod1/node\n", {"kubepods/pod1/node/cpu.max": "max 100000\n",
                                             "kubepods/pod1/cpu.max": "150000 100000\n",
                                             "kubepods/cpu.max": "400000 100000\n"}) == 1.5
    assert limit("0::/\n", {"cpu.max": "max 100000\n"}) is None
    assert limit("0::/\n", {"cpu.max": "200000 100000\n"}) == 2.0
    # cgroup v1: quota / period of the cpu controller; -1 is unlimited.
    v1 = "cpu,cpuacct/docker/abc/"
    assert limit("3:cpuset:/\n2:cpu,cpuacct:/docker/abc\n", {v1 + "cpu.cfs_quota_us": "50000\n",
                                                              v1 + "cpu.cfs_period_us": "100000\n"}) == 0.5
    assert limit("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}) is None
    # Missing or unreadable: no limit known (the affinity alone decides).
    assert limit("garbage\n", {}) is None
    assert limit("0::/\n", {"cpu.max": "lots 0\n"}) is None
    assert schema.cgroup_cpu_limit(tmp_path / "none", tmp_path / "none" / "cgroup") is None

    for quota, cores in ((None, 2), (0.5, 1), (1.5, 1), (2.0, 2), (8.0, 2)):
        monkeypatch.setattr(schema, "cgroup_cpu_limit", lambda quota=quota: quota)
        monkeypatch.setattr(schema.os, "sched_getaffinity", lambda pid: {0, 1})
        assert schema.usable_cores() == cores, quota
