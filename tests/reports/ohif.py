"""OHIF v3 (built ``dist/`` of the npm package ``@ohif/app``) served on loopback over an Orthanc DICOMweb
proxy, and headless Chromium driven through the DevTools protocol. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

OHIF_DIST_ENV = "ORTHO_TEST_OHIF_DIST"
DEFAULT_OHIF_DIST = Path("/opt/ohif/package/dist")
CHROMIUM = Path("/usr/bin/chromium")

APP_CONFIG = """window.config = {
  routerBasename: '/', extensions: [], modes: [], customizationService: {}, showStudyList: true,
  maxNumberOfWebWorkers: 2, showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  showLoadingIndicator: true, disableConfirmationPrompts: true, investigationalUseDialog: {option: 'never'},
  showErrorDetails: 'always', defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc on loopback', name: 'orthanc', wadoUriRoot: '/wado', qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web', qidoSupportsIncludeField: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, omitQuotationForMultipartRequest: true, bulkDataURI: {enabled: true},
    },
  }],
};
"""


def ohif_dist() -> Path | None:
    path = Path(os.environ.get(OHIF_DIST_ENV, DEFAULT_OHIF_DIST))
    return path if (path / "index.html").is_file() else None


class OhifServer:
    """Static ``dist/`` with our app-config.js, SPA fallback to index.html, ``/dicom-web`` proxied to
    Orthanc so the viewer and its data share one origin (no CORS)."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        handler = _handler(dist, orthanc_url)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(dist: Path, orthanc_url: str):
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, *args) -> None:  # keep pytest output readable
            pass

        def end_headers(self) -> None:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/dicom-web/") or path.startswith("/wado"):
                return self._proxy()
            if path == "/app-config.js":
                return self._send(APP_CONFIG.encode(), "application/javascript")
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"  # client-side routes such as /viewer
            return super().do_GET()

        def _proxy(self) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
            upstream = requests.get(orthanc_url + self.path, headers=headers, timeout=30)
            self._send(upstream.content, upstream.headers.get("Content-Type", "application/octet-stream"),
                       upstream.status_code)

        def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class Chromium:
    """Headless Chromium on a throwaway profile; every non-loopback request goes to a dead proxy."""

    def __init__(self, port: int, *, width: int = 1600, height: int = 1000) -> None:
        import websocket  # websocket-client

        self.profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self.process = subprocess.Popen([
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
            "--proxy-server=http://127.0.0.1:9",  # loopback itself bypasses proxies (implicit rule)
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--window-size={width},{height}",
            "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "about:blank",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=1).json()
                page = next(p for p in pages if p["type"] == "page")
                break
            except (requests.ConnectionError, StopIteration):
                if time.monotonic() > deadline:
                    raise RuntimeError("Chromium did not start") from None
                time.sleep(0.2)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        return None

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
