"""Start and stop the embedded stack: PACS (with worklist and DICOMweb), FHIR server, MLLP listener,
video stream.

The stack runs in-process (background threads; what notebooks and tests use)
or in the foreground with ``kit serve``. Every service listens on 127.0.0.1 by
default; port 0 means ephemeral. It is preloaded with the synthetic sample
cohort (:mod:`kit.examples`), so every notebook and the demo run offline::

    from kit.stack import Stack

    with Stack.ephemeral() as stack:          # temp folder, ephemeral ports
        settings = stack.client_settings()    # clients pointed at this stack
        print(stack.addresses())

Each service implements the same small interface (:class:`EmbeddedService`):
``start()`` binds and returns once it serves, ``stop()`` is idempotent, and
``address`` names it (``dicom://KIT@127.0.0.1:11112``,
``http://127.0.0.1:8080/fhir/R4``, ``mllp://127.0.0.1:2575``,
``http://127.0.0.1:8042/dicom-web``, ``http://127.0.0.1:8090/live.ts``). The DICOMweb service
serves the PACS's own store (started after it), so C-STORE and STOW-RS, C-FIND and QIDO-RS see
the same instances.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterable
from types import TracebackType
from typing import Protocol, runtime_checkable

from kit.config import Settings, StackSettings, load_settings
from kit.errors import KitError, PeerError

__all__ = ["SERVICES", "EmbeddedService", "Stack"]

log = logging.getLogger(__name__)

#: The services the stack can run, in start order.
SERVICES = ("pacs", "fhir", "mllp", "dicomweb", "video")


@runtime_checkable
class EmbeddedService(Protocol):
    """What the stack needs from a server it runs."""

    name: str
    port: int

    def start(self) -> None:
        """Bind and return once ready to serve."""

    def stop(self) -> None:
        """Stop serving; safe to call twice."""

    @property
    def address(self) -> str:
        """Where clients reach it, as a URL-like string."""


class Stack:
    """The embedded stack, preloaded with the sample cohort.

    Parameters
    ----------
    settings : StackSettings, optional
        Host, ports, AE title and data folder (default: from :func:`kit.load_settings`).
    services : iterable of str
        Which services to run, any of ``"pacs"``, ``"fhir"``, ``"mllp"``, ``"dicomweb"``,
        ``"video"`` (the sample endoscopy clip as a looping live MPEG-TS stream over HTTP).
    preload : bool
        Load the sample cohort (DICOM files, worklist, FHIR bundle) into the
        services on start. Loading is idempotent: a restart on the same data
        folder does not duplicate anything.
    """

    def __init__(self, settings: StackSettings | None = None, *,
                 services: Iterable[str] = SERVICES, preload: bool = True) -> None:
        self.settings = settings if settings is not None else load_settings().stack
        wanted = tuple(services)
        unknown = [s for s in wanted if s not in SERVICES]
        if unknown:
            raise KitError(f"unknown service(s) {unknown}; choose from {SERVICES}")
        self.wanted = wanted
        self.preload = preload
        self.data_dir = self.settings.resolved_data_dir()
        self.services: dict[str, EmbeddedService] = {}
        self._tmp: str | None = None

    @classmethod
    def ephemeral(cls, *, services: Iterable[str] = SERVICES, preload: bool = True,
                  host: str = "127.0.0.1") -> Stack:
        """A stack on ephemeral ports with a temporary data folder, removed on stop."""
        tmp = tempfile.mkdtemp(prefix="kit-stack-")
        settings = StackSettings(host=host, pacs_port=0, fhir_port=0, mllp_port=0, dicomweb_port=0,
                                 video_port=0,
                                 data_dir=tmp)
        stack = cls(settings, services=services, preload=preload)
        stack._tmp = tmp
        return stack

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Stack:
        """Start every wanted service (preloading the cohort); return self."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.wanted:
                service = getattr(self, f"_make_{name}")()
                service.start()
                self.services[name] = service
                log.info("%s  %s", name, service.address)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every running service (reverse order) and remove a temporary data folder."""
        for name in reversed(list(self.services)):
            try:
                self.services[name].stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", name)
        self.services.clear()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------------------------

    def addresses(self) -> dict[str, str]:
        """``{service: address}`` of the running services."""
        return {name: s.address for name, s in self.services.items()}

    def failures(self) -> dict[str, BaseException]:
        """``{service: error}`` of services whose worker died (health red; empty when all is well).

        A foreground runner (``kit serve``) should poll this and exit non-zero when it is not empty.
        """
        out: dict[str, BaseException] = {}
        for name, service in self.services.items():
            failure = getattr(service, "failure", None)
            if isinstance(failure, BaseException):
                out[name] = failure
        return out

    def port(self, name: str) -> int:
        """The bound port of a running service."""
        try:
            return self.services[name].port
        except KeyError:
            raise PeerError(f"the embedded {name} service is not running") from None

    def client_settings(self, base: Settings | None = None) -> Settings:
        """Settings whose clients point at this running stack.

        Parameters
        ----------
        base : Settings, optional
            Settings to start from (default: :func:`kit.load_settings`); only
            the addresses of running services are replaced.
        """
        base = base if base is not None else load_settings()
        host = self.settings.host  # the called AE is the PACS's own: it rejects any other
        changes: dict[str, object] = {}
        if "pacs" in self.services:
            changes["pacs"] = dataclasses.replace(base.pacs, host=host, port=self.port("pacs"),
                                                  called_aet=self.settings.pacs_aet)
        if "fhir" in self.services:
            changes["fhir"] = dataclasses.replace(base.fhir, base=self.services["fhir"].address,
                                                  auth="none", vendor="generic")
        if "mllp" in self.services:
            changes["hl7"] = dataclasses.replace(base.hl7, host=host, port=self.port("mllp"))
        if "dicomweb" in self.services:
            changes["dicomweb"] = dataclasses.replace(base.dicomweb, base=self.services["dicomweb"].address,
                                                      username=None, password=None, token=None)
        else:  # a stack without its DICOMweb service: no DICOMweb to use (Settings.uses_dicomweb)
            changes["dicomweb"] = dataclasses.replace(base.dicomweb, base="")
        if "video" in self.services:
            changes["endoscopy"] = dataclasses.replace(base.endoscopy,
                                                       stream_url=self.services["video"].address)
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    # -- the services ------------------------------------------------------------------------

    def _make_pacs(self) -> EmbeddedService:
        from kit.dicom.matching import worklist_items_from_cohort
        from kit.dicom.scp import EmbeddedPACS

        s = self.settings
        destinations = {aet: _host_port(aet, addr) for aet, addr in s.move_destinations.items()}
        pacs = EmbeddedPACS(self.data_dir / "pacs", host=s.host, port=s.pacs_port, aet=s.pacs_aet,
                            allowed_aets=s.allowed_aets, move_destinations=destinations,
                            worklist=worklist_items_from_cohort() if self.preload else None,
                            accept_any_called_aet=s.pacs_accept_any_called_aet)
        if self.preload:
            from kit import examples

            files = sorted(examples.dicom_dir().rglob("*.dcm"))
            pacs.import_files(files, skip_existing=True)  # a restart writes nothing twice
        return pacs

    def _make_fhir(self) -> EmbeddedService:
        from kit.fhir.server import EmbeddedFhirServer

        preload = None
        if self.preload:
            from kit import examples

            preload = examples.fhir_bundle()
        return EmbeddedFhirServer(self.data_dir / "fhir.db", host=self.settings.host,
                                  port=self.settings.fhir_port, preload=preload)

    def _make_dicomweb(self) -> EmbeddedService:
        from kit.dicom.scp import EmbeddedPACS
        from kit.dicom.web_server import EmbeddedDicomWeb

        pacs = self.services.get("pacs")
        if isinstance(pacs, EmbeddedPACS):  # the same store: C-STORE and STOW-RS, C-FIND and QIDO-RS agree
            return EmbeddedDicomWeb(pacs.store, host=self.settings.host, port=self.settings.dicomweb_port)
        web = EmbeddedDicomWeb(self.data_dir / "pacs", host=self.settings.host,
                               port=self.settings.dicomweb_port)
        if self.preload:
            from kit import examples

            web.store.import_files(sorted(examples.dicom_dir().rglob("*.dcm")), skip_existing=True)
        return web

    def _make_mllp(self) -> EmbeddedService:
        from kit.hl7.mllp import MLLPListener

        return MLLPListener(self.data_dir / "mllp.db", host=self.settings.host,
                            port=self.settings.mllp_port)


    def _make_video(self) -> EmbeddedService:
        from kit.endoscopy.stream_server import VideoStreamServer

        return VideoStreamServer(host=self.settings.host, port=self.settings.video_port)


def _host_port(aet: str, value: str) -> tuple[str, int]:
    from kit.errors import ConfigError

    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"stack.move_destinations.{aet}", f"expected host:port, got {value!r}")
    return host, int(port)

