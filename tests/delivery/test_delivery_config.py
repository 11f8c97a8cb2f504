"""Destinations, delivery and result settings: file, environment and flags, validated."""

from __future__ import annotations

import pytest

from ortho_node.app.cli.main import build_parser
from ortho_node.config import ConfigError, load_settings

TOML = """
[delivery]
retry_for_hours = 48

[results]
sr_series_number = 7001

[[destinations]]
name = "PACS"
ae_title = "MAINPACS"
host = "10.0.0.5"
port = 104
kinds = ["seg", "sr"]

[[destinations]]
name = "VNA"
ae_title = "VNA"
host = "vna.example"
port = 11112
tls = true
"""


def test_destinations_from_file_environment_and_flags(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    settings = load_settings(path, environ={"ORTHO_NODE_DESTINATIONS": "VNA=OTHER@127.0.0.1:4242"},
                             overrides={"destinations": ["TEST=T@127.0.0.1:11113"]})
    by_name = {d.name: d for d in settings.destinations}
    assert by_name["PACS"].kinds == ["seg", "sr"] and by_name["PACS"].port == 104
    assert (by_name["VNA"].ae_title, by_name["VNA"].tls) == ("OTHER", False)  # replaced by the environment
    assert by_name["TEST"].kinds == ["seg", "sr", "summary"]
    assert settings.delivery.retry_for_hours == 48 and settings.results.sr_series_number == 7001


@pytest.mark.parametrize("table, message", [
    ('name = "A"\nae_title = "A"\nhost = "h"\nkinds = ["pdf"]', "kinds"),
    ('name = "A"\nae_title = "A"\nhost = "h"\ncolour = "red"', "unknown setting 'colour'"),
    ('name = "A b"\nae_title = "A"\nhost = "h"', "destination name"),
    ('name = "A"\nae_title = "A"\nhost = "h"\nport = 0', "at least 1"),
])
def test_bad_destinations_are_named(tmp_path, table, message):
    path = tmp_path / "node.toml"
    path.write_text(f"[[destinations]]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_bad_flag_and_result_templates_are_rejected():
    with pytest.raises(ConfigError, match="NAME=AE@HOST:PORT"):
        load_settings(environ={}, overrides={"destinations": ["PACS@host:104"]})
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(environ={}, overrides={"results.seg_series_description": "AI {series}"})


def test_serve_takes_repeatable_destinations():
    args = build_parser().parse_args(["serve", "--destination", "A=A@h:1", "--destination", "B=B@h:2"])
    assert args.destination == ["A=A@h:1", "B=B@h:2"]
