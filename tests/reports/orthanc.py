"""Run a real Orthanc (Debian package ``orthanc`` + ``orthanc-dicomweb``) on loopback for a test or bench."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from tests.node_process import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN_CANDIDATES = (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                              Path("/usr/lib/orthanc/libOrthancDicomWeb.so"))


def dicomweb_plugin() -> Path | None:
    found = [p for p in DICOMWEB_PLUGIN_CANDIDATES if p.exists()]
    if not found:
        found = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
    return found[0] if found else None


class Orthanc:
    """Orthanc with a generated configuration: its own storage under ``folder``, HTTP and DICOM on free
    loopback ports, no remote access, DICOMweb at ``/dicom-web/`` when the plugin is installed.

    ``modalities`` (name -> (AE title, host, port)) are the DICOM nodes Orthanc may send to, e.g. with
    :meth:`push`."""

    AE_TITLE = "ORTHANC"

    def __init__(self, folder: Path, *, dicomweb: bool = False,
                 modalities: Mapping[str, tuple[str, str, int]] | None = None,
                 dicomweb_servers: Mapping[str, Mapping[str, object]] | None = None,
                 users: Mapping[str, str] | None = None) -> None:
        """``dicomweb_servers``: DICOMweb peers Orthanc may send to by STOW-RS (``/dicom-web/servers/NAME/stow``),
        name -> the plugin's server entry (``Url``, ``Username``/``Password`` or ``HttpHeaders``). ``users``: HTTP basic
        users Orthanc requires (name -> password); the helpers below sign in as the first."""
        self.auth = next(iter(users.items())) if users else None
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ortho-node-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.AE_TITLE, "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users),
            "RegisteredUsers": dict(users or {}),
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "StorageCompression": False, "ConcurrentJobs": 1, "HttpsVerifyPeers": False,
            "DicomModalities": {name: list(node) for name, node in (modalities or {}).items()},
            "OrthancPeers": {}, "StableAge": 1,
        }
        if dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise RuntimeError("orthanc-dicomweb plugin not found (Debian package orthanc-dicomweb)")
            config["Plugins"] = [str(plugin)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                                  "Servers": {name: dict(entry) for name, entry in (dicomweb_servers or {}).items()}}
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log_path = folder / "orthanc.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1, auth=self.auth).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def get(self, path: str):
        response = requests.get(f"{self.url}{path}", timeout=10, auth=self.auth)
        response.raise_for_status()
        return response.json()

    def upload(self, payload: bytes) -> str:
        """POST one DICOM file to ``/instances``; returns the Orthanc ID of its study."""
        response = requests.post(f"{self.url}/instances", data=payload, timeout=30, auth=self.auth,
                                 headers={"Content-Type": "application/dicom"})
        response.raise_for_status()
        return response.json()["ParentStudy"]

    def push(self, modality: str, resources: Sequence[str], *, timeout: float = 120.0) -> dict:
        """C-STORE ``resources`` (Orthanc IDs) to ``modality`` through ``/modalities/{id}/store``; returns
        when Orthanc's SCU has finished (synchronous job)."""
        response = requests.post(f"{self.url}/modalities/{modality}/store", timeout=timeout, auth=self.auth,
                                 json={"Resources": list(resources), "Synchronous": True})
        response.raise_for_status()
        return response.json()

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study with this Study Instance UID, or None when it holds none."""
        found = requests.post(f"{self.url}/tools/lookup", data=study_uid, timeout=10, auth=self.auth).json()
        return next((item["ID"] for item in found if item["Type"] == "Study"), None)

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Simplified main tags of every instance of a study (with its series' tags merged in)."""
        study_id = self.study_id(study_uid)
        if study_id is None:
            return []
        result = []
        for instance in self.get(f"/studies/{study_id}/instances"):
            tags = self.get(f"/instances/{instance['ID']}/simplified-tags")
            result.append(tags)
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
