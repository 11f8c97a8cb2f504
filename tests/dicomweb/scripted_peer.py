"""A STOW-RS origin server on loopback that answers scripted HTTP statuses (then stores), for the delivery rules a
real archive cannot be made to show on demand: 503 and 429 with Retry-After, 408, 400, a 202 that fails one
instance. It reads every part it receives (pydicom) and counts what it stored, as ``tests.delivery.FakePacs``."""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import dcmread

from tests.node_process import free_port


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> Failure Reason (202/409 answers)


class ScriptedStowPeer:
    def __init__(self, answers: list[Answer] | None = None) -> None:
        self.answers = list(answers or [])
        self.received: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self.authorization: list[str | None] = []
        self.port = free_port()
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                peer.authorization.append(self.headers.get("Authorization"))
                status, headers, payload = peer.answer(self.headers["Content-Type"], body)
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/dicom+json",
                                    "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"

    def answer(self, content_type: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        uids = _instance_uids(content_type, body)
        for uid in uids:
            self.received[uid] += 1
        scripted = self.answers.pop(0) if self.answers else Answer(200)
        if scripted.status not in (200, 202, 409):
            return scripted.status, scripted.headers, b'{"error": "scripted"}'
        stored = [uid for uid in uids if uid not in scripted.fail]
        for uid in stored:
            self.stored[uid] += 1
        response = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]}} for u in stored]},
                    "00081198": {"vr": "SQ", "Value": [
                        {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [code]}}
                        for u, code in scripted.fail.items()]}}
        return scripted.status, scripted.headers, json.dumps(response).encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _instance_uids(content_type: str, body: bytes) -> list[str]:
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    uids = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        payload = chunk.split(b"\r\n\r\n", 1)[1][:-2]  # headers, then the file up to the CRLF before the delimiter
        uids.append(str(dcmread(BytesIO(payload), stop_before_pixels=True).SOPInstanceUID))
    return uids
