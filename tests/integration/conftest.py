"""Shared integration fixtures: a real Debian Orthanc (DICOM + DICOMweb + worklists) on ephemeral ports.

Usage::

    def test_something(orthanc):
        orthanc.dicom_port, orthanc.http_port, orthanc.aet, orthanc.dicomweb
        orthanc.add_modality("KITSCU", "KITSCU", "127.0.0.1", port)   # C-MOVE destination
        orthanc.upload(path)                                           # REST upload of a file
        orthanc.worklist_dir                                           # drop *.wl files here

Each test module gets its own Orthanc (module scope: ``orthanc``); ``orthanc_factory`` starts
more with config overrides (e.g. ``{"DicomCheckCalledAet": True}``). Processes are started
with ``spawned()`` (TCP_NODELAY=1 env) and stopped by PID.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import free_port, peer_env, require_tool, spawned, wait_for_port

if TYPE_CHECKING:
    from kit.dicom.scp import EmbeddedPACS

PLUGINS = Path("/usr/share/orthanc/plugins")


@dataclasses.dataclass
class OrthancServer:
    """A running Orthanc: ports, AE title, DICOMweb root and helpers over its REST API."""

    dicom_port: int
    http_port: int
    aet: str
    storage: Path
    worklist_dir: Path
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """REST root, e.g. ``http://127.0.0.1:8042``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """DICOMweb root (QIDO/WADO/STOW), e.g. ``http://127.0.0.1:8042/dicom-web``."""
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, body: bytes | dict[str, Any] | list[Any] | None = None,
             *, content_type: str = "application/json", timeout: float = 30.0) -> Any:
        """Call Orthanc's REST API; JSON answers are decoded."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
            raw = resp.read()
        if resp.headers.get("Content-Type", "").startswith("application/json") and raw:
            return json.loads(raw)
        return raw

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register a DICOM modality (a C-MOVE destination) by name."""
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def upload(self, path: str | Path) -> dict[str, Any]:
        """Store one DICOM file through the REST API (POST /instances)."""
        result: dict[str, Any] = self.rest("POST", "/instances", Path(path).read_bytes(),
                                           content_type="application/dicom")
        return result

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        result: list[str] = self.rest("GET", "/instances")
        return result

    def clear(self) -> None:
        """Delete every patient (and so everything)."""
        for pid in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{pid}")


def _start(tmp: Path, stack: ExitStack, overrides: dict[str, Any] | None = None) -> OrthancServer:
    exe = require_tool("Orthanc")
    dicom_port, http_port = free_port(), free_port()
    storage, worklists = tmp / "storage", tmp / "worklists"
    storage.mkdir(parents=True, exist_ok=True)
    worklists.mkdir(parents=True, exist_ok=True)
    plugins = [str(PLUGINS / p) for p in ("libOrthancDicomWeb.so", "libModalityWorklists.so")
               if (PLUGINS / p).exists()]
    config: dict[str, Any] = {
        "Name": "kit-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowFindWorklist": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {},
        "DicomModalitiesInDatabase": False,
        "MaximumPduLength": 131072,
        "SaveJobs": False,
        "OverwriteInstances": True,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "Worklists": {"Enable": True, "Database": str(worklists)},
    }
    config.update(overrides or {})
    cfg = tmp / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=1))
    proc = stack.enter_context(spawned([exe, str(cfg)], env=peer_env(), log=tmp / "orthanc.log"))
    wait_for_port(http_port, proc=proc, timeout=60)
    wait_for_port(dicom_port, proc=proc, timeout=60)
    server = OrthancServer(dicom_port, http_port, str(config["DicomAet"]), storage, worklists, proc)
    # The HTTP port may accept before the REST API answers.
    for _ in range(100):
        try:
            server.rest("GET", "/system", timeout=2)
            break
        except (urllib.error.URLError, ConnectionError):
            import time
            time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc per test module (DICOM + DICOMweb + worklist plugin), stopped by PID."""
    with ExitStack() as stack:
        yield _start(tmp_path_factory.mktemp("orthanc"), stack)


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Callable[..., OrthancServer]]:
    """Start extra Orthancs with config overrides: ``orthanc_factory(DicomCheckCalledAet=True)``."""
    with ExitStack() as stack:
        def make(**overrides: Any) -> OrthancServer:
            return _start(tmp_path_factory.mktemp("orthanc"), stack, overrides)
        yield make


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[EmbeddedPACS]:
    """An empty embedded PACS (its default AE title) on an ephemeral 127.0.0.1 port, closed after the
    test (folders with their own ``pacs`` fixture override it)."""
    from kit.dicom.scp import EmbeddedPACS

    server = EmbeddedPACS(tmp_path / "pacs", port=0)
    server.start()
    try:
        yield server
    finally:
        server.close()
