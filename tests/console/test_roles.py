"""Issue 24: roles in ``console.users`` entries (``NAME:HASH`` a viewer, ``NAME:operator:HASH`` an operator), the
``hash-password --role`` entry, and unknown roles refused at start-up."""

from __future__ import annotations

import io

import pytest

from listeners.console.passwords import hash_password, verify_password
from ortho_node.config import ConfigError, load_settings
from ortho_node.config.users import Role, parse_user


def test_entries_without_a_role_are_viewers_and_operators_may_act():
    stored = hash_password("long enough password")
    viewer, operator = parse_user(f"ann:{stored}"), parse_user(f"bob:operator:{stored}")
    assert (viewer.name, viewer.role, viewer.password_hash) == ("ann", Role.VIEWER, stored)
    assert (operator.name, operator.role, operator.password_hash) == ("bob", Role.OPERATOR, stored)
    assert parse_user(f"cy:viewer:{stored}").role is Role.VIEWER
    assert operator.role.may_act and not viewer.role.may_act


def test_unknown_roles_and_plaintext_are_refused_naming_the_entry():
    stored = hash_password("long enough password")
    with pytest.raises(ConfigError, match=r"console.users\[1\]: the role of 'bob' must be one of viewer, operator"):
        load_settings(environ={}, overrides={"console.users": [f"ann:{stored}", f"bob:admin:{stored}"]})
    with pytest.raises(ConfigError, match=r"console.users\[0\].*not a scrypt hash"):
        load_settings(environ={}, overrides={"console.users": ["bob:operator:plaintext"]})


@pytest.mark.parametrize("role, prefix", [("operator", "operator:"), ("viewer", "")])
def test_hash_password_prints_the_role(monkeypatch, capsys, role, prefix):
    from ortho_node.app.cli import main as cli

    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert cli.main(["console", "hash-password", "alice", "--role", role]) == 0
    entry = capsys.readouterr().out.strip()
    assert entry.startswith(f"alice:{prefix}scrypt$")
    user = parse_user(entry)
    assert user.role is Role(role) and verify_password("a long enough password", user.password_hash)
