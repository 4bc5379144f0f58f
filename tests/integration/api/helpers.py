"""Shared helpers of the API tests: the API served over a running embedded stack, with one key per role."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from kit.config import ApiSettings, Secret, Settings
from kit.services._auth import Role, new_key
from kit.services.api import serve
from kit.services.api_http import ApiServer
from kit.services.api_vault import new_fernet_key
from kit.stack import Stack

#: The bootstrap admin key every test API starts with.
ADMIN_KEY = "kit_test-admin-key-" + "x" * 24


@dataclasses.dataclass
class RunningApi:
    """A served API: its address, workspace, one key per role and clients that carry them."""

    server: ApiServer
    workspace: Path
    settings: Settings
    keys: dict[str, str]

    @property
    def base(self) -> str:
        return self.server.address

    def client(self, role: str | None = "admin", **kwargs: Any) -> httpx.Client:
        headers = {"X-API-Key": self.keys[role]} if role else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=kwargs.pop("timeout", 120), **kwargs)


def api_settings(stack: Stack, **api: Any) -> Settings:
    """The stack's client settings with an ``[api]`` section (a new Fernet key, the bootstrap admin key)."""
    values: dict[str, Any] = {
        "fernet_key": Secret(new_fernet_key()),
        "admin_key": Secret(ADMIN_KEY),
        "hl7_store": str(stack.data_dir / "mllp.db"),
        **api,
    }
    return dataclasses.replace(stack.client_settings(), api=ApiSettings(**values))


@contextmanager
def running_api(stack: Stack, workspace: Path, **options: Any) -> Iterator[RunningApi]:
    """Serve the API on an ephemeral port over ``stack``; keys for read, write and admin."""
    body_timeout = options.pop("body_timeout", 30.0)
    settings = api_settings(stack, **options)
    server = serve(settings, port=0, workspace=workspace, body_timeout=body_timeout)
    try:
        store = server.app.state.ctx.store
        keys = {"admin": ADMIN_KEY}
        for role in ("read", "write"):
            keys[role] = new_key()
            store.add_key(keys[role], Role(role), f"test {role}")
        yield RunningApi(server, workspace, settings, keys)
    finally:
        server.stop()
