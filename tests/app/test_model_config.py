"""The ``[model]`` settings and the model ``serve`` loads once at start-up: errors name the key and stop the
node before it accepts a study it could not analyse."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ortho_node.app.node import load_predictor
from ortho_node.config import BUNDLED_MODEL, ConfigError, load_settings
from tests.conftest import REPO


def test_model_defaults_to_the_bundled_model_and_is_overridable(tmp_path):
    settings = load_settings(environ={})
    assert (settings.model.enabled, settings.model.device, settings.model.threads) == (True, "auto", 0)
    assert settings.model_path == BUNDLED_MODEL and (BUNDLED_MODEL / "model_card.json").is_file()
    config = tmp_path / "node.toml"
    config.write_text(f'[model]\npath = "{tmp_path}"\ndevice = "cpu"\n')
    settings = load_settings(config, environ={"ORTHO_NODE_MODEL_ENABLED": "false", "ORTHO_NODE_MODEL_THREADS": "2"})
    assert (settings.model_path, settings.model.device, settings.model.enabled, settings.model.threads) == \
        (tmp_path, "cpu", False, 2)


@pytest.mark.parametrize("environ, message", [
    ({"ORTHO_NODE_MODEL_DEVICE": "tpu"}, "ORTHO_NODE_MODEL_DEVICE: must be one of auto, cpu, cuda"),
    ({"ORTHO_NODE_MODEL_THREADS": "-1"}, "ORTHO_NODE_MODEL_THREADS: must be at least 0"),
    ({"ORTHO_NODE_MODEL_ENABLED": "maybe"}, "ORTHO_NODE_MODEL_ENABLED: expected true or false"),
])
def test_bad_model_settings_name_the_variable(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_receive_only_node_loads_no_model():
    assert load_predictor(load_settings(environ={"ORTHO_NODE_MODEL_ENABLED": "false"})) is None


def _model_folder(tmp_path, card: str | None, weights: bool):
    folder = tmp_path / "model"
    folder.mkdir()
    if card is not None:
        (folder / "model_card.json").write_text(card)
    if weights:
        shutil.copy(BUNDLED_MODEL / "model.safetensors", folder)
    return load_settings(environ={"ORTHO_NODE_MODEL_PATH": str(folder), "ORTHO_NODE_MODEL_DEVICE": "cpu"})


@pytest.mark.parametrize("card, weights, message", [
    (None, True, "model card cannot be read: .*no model_card.json"),
    ("{not json", True, "model card cannot be read"),
    ('{"card_format": 99}', True, "model card cannot be read: not a task-model card"),
    ("bundled", False, "model .* cannot be loaded: .*model.safetensors"),  # the weights the card names are not there
])
def test_unusable_model_folder_names_model_path(tmp_path, card, weights, message):
    if card == "bundled":
        card = (BUNDLED_MODEL / "model_card.json").read_text()
    settings = _model_folder(tmp_path, card, weights)
    with pytest.raises(ConfigError, match=rf"^model\.path \({tmp_path / 'model'}\): {message}"):
        load_predictor(settings)


def test_bundled_model_loads_on_the_cpu():
    predictor = load_predictor(load_settings(environ={"ORTHO_NODE_MODEL_DEVICE": "cpu"}))
    card = json.loads((BUNDLED_MODEL / "model_card.json").read_text())
    assert (predictor.card.name, predictor.card.version, predictor.device.type) == (card["name"], card["version"],
                                                                                     "cpu")


def test_cuda_without_a_gpu_names_model_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="^model.device: cuda was asked for"):
        load_predictor(load_settings(environ={"ORTHO_NODE_MODEL_DEVICE": "cuda"}))


def test_serve_stops_at_start_up_on_a_missing_model_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_NODE_")}
    env["ORTHO_NODE_MODEL_PATH"] = str(tmp_path / "nowhere")
    result = subprocess.run([sys.executable, "-m", "ortho_node.app.cli.main", "serve", "--data-dir", str(tmp_path / "data"),
                             "--host", "127.0.0.1", "--port", "0"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"configuration error: model.path ({tmp_path / 'nowhere'}): folder does not exist" in result.stderr
    assert not (tmp_path / "data").exists()  # stopped before it created anything
