"""The serving node stays apart from training: building it with the bundled model loads neither the synthetic
generator nor training code (nor nibabel or matplotlib, which only they use)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

_BUILD_SERVING_NODE = """
import json, sys
import ortho_node.app
from ortho_node.app.node import Node, load_predictor
from ortho_node.config import load_settings

settings = load_settings(environ={}, overrides={"storage.data_dir": sys.argv[1], "model.device": "cpu"})
predictor = load_predictor(settings)
node = Node(settings, predictor=predictor)
node.prepare()
node.engine.dispose()
print(json.dumps({"predictor": type(predictor).__name__, "modules": sorted(sys.modules)}))
"""

_TRAINING_SIDE = ("ortho_node.training", "ortho_node.synthetic", "ortho_node.app.cli.synth", "nibabel", "matplotlib")


def test_serving_node_imports_no_training_code(tmp_path):
    result = subprocess.run([sys.executable, "-c", _BUILD_SERVING_NODE, str(tmp_path / "data")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["predictor"] == "ServedModel"  # the registry's active model (the bundled one), loaded
    loaded = [name for name in report["modules"] if name.startswith(_TRAINING_SIDE)]
    assert loaded == []
    assert "ortho_node.inference.predictor" in report["modules"]
