"""A node receiving by C-STORE and STOW-RS (console on, so STOW-RS is served on the console's port), with console
users and API tokens of each role."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from listeners.console.passwords import hash_password
from ortho_node.access.tokens import create_token
from ortho_node.config.users import Role

OPERATOR, VIEWER, ROUTER = ("oper", "operator pass 1"), ("view", "viewer pass 1"), ("router", "router pass 1")


@dataclass
class StowNode:
    node: object
    tokens: dict[str, str] = field(default_factory=dict)  # role -> bearer token

    @property
    def url(self) -> str:
        listener = self.node.dicomweb or self.node.console
        return f"http://127.0.0.1:{listener.port}/dicomweb"

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def users() -> list[str]:
    return [f"{OPERATOR[0]}:operator:{hash_password(OPERATOR[1])}", f"{VIEWER[0]}:{hash_password(VIEWER[1])}",
            f"{ROUTER[0]}:stow:{hash_password(ROUTER[1])}"]


def stow_node(make_node, **overrides) -> StowNode:
    node = make_node(**{"console.enabled": True, "console.port": 0, "console.users": users(), "storage.fsync": False,
                        "model.enabled": False, **overrides})
    made = StowNode(node)
    for role in Role:
        made.tokens[role.value] = create_token(node.session_factory, f"t-{role.value}", role).token
    return made


@pytest.fixture
def stow(start_node) -> StowNode:
    return stow_node(start_node)
