"""Sustained load in CI: ``bench/soak.py --minutes 1`` (4 dcmtk storescu senders against a node it starts),
held to issue 23's goals: >= 50 instances/s, no acknowledged instance missing, RSS growth < 50 MB, file
descriptors back where the load left them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, dcmtk


@pytest.mark.slow
def test_four_senders_for_a_minute(tmp_path):
    dcmtk("storescu")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", "1", "--senders", "4",
                             "--json"], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(result.stdout)
    assert figures["missing"] == 0 and figures["failed_associations"] == 0
    assert figures["acknowledged"] == figures["sent"] == figures["stored"]
    assert figures["instances_per_s"] >= 50
    assert figures["rss_growth_mb"] < 50
    assert figures["fds_end"] <= figures["fds_first_interval"] + 8
