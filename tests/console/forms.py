"""Test plumbing for the console's forms: every POST carries the CSRF token of the page that holds the form;
signing in from a real browser."""

from __future__ import annotations

import json
import re

import requests

_TOKEN = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_token(html: str) -> str:
    match = _TOKEN.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(session: requests.Session, base_url: str, user: str, password: str, *, next_path: str | None = None,
          **kwargs) -> requests.Response:
    """Open the login page (its CSRF token and nonce cookie), then submit the form as a browser does."""
    page = session.get(f"{base_url}/login", timeout=10, verify=kwargs.get("verify", session.verify))
    data = {"user": user, "password": password, "csrf_token": csrf_token(page.text)}
    if next_path is not None:
        data["next"] = next_path
    return session.post(f"{base_url}/login", data=data, timeout=10, **kwargs)


def sign_in_with_chromium(chromium, base_url: str, user: str, password: str) -> None:
    """Open the studies list, get sent to the login page, fill in the form and submit it; back on the list."""
    chromium.navigate(f"{base_url}/studies")
    assert chromium.wait_for("location.pathname === '/login' && !!document.querySelector('#password')", 20)
    chromium.evaluate(f"document.querySelector('#user').value = {json.dumps(user)};"
                      f"document.querySelector('#password').value = {json.dumps(password)};"
                      "document.querySelector('form.login').submit(); true")
    assert chromium.wait_for("location.pathname === '/studies' && document.readyState === 'complete'", 20)
