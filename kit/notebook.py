"""The way into a notebook: which systems it talks to, and the one folder it writes in.

Every notebook's first code cell after its parameters calls :func:`connect`::

    session = connect(SETTINGS_FILE, workspace=WORKSPACE, services=("pacs", "fhir"))
    print(session)        # which systems, their addresses, where the workspace is
    ...
    print(session.close())  # last cell: stop the embedded stack, remove the workspace

Which systems, first match wins (the rule of the ``kit`` command too,
:func:`kit.config.load_settings`):

1. ``settings_file`` (the notebook's ``SETTINGS_FILE`` parameter),
2. the ``KIT_CONFIG`` environment variable,
3. ``./kit.toml``,
4. none: the embedded stack, started in this kernel on ephemeral loopback ports,
   its data inside the workspace.

The workspace is one named folder (``./kit-workspace`` unless ``workspace`` says
otherwise, never the system temporary folder) for everything the notebook writes:
retrieved DICOM, de-identified copies, the re-identification map, exports, HL7
stores. It is private to the user (mode 0700) and marked as the kit's, so
:meth:`Session.close` removes it and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kit.config import Settings, StackSettings, describe_source, load_settings
from kit.errors import InvalidInputError, StoreError

if TYPE_CHECKING:
    from kit.hl7.store import MessageStore
    from kit.stack import Stack

__all__ = ["DEFAULT_WORKSPACE", "MARKER", "Session", "connect"]

#: The workspace folder when none is given, under the current folder.
DEFAULT_WORKSPACE = "kit-workspace"
#: The file that marks a folder as a kit workspace (what :meth:`Session.close` may remove).
MARKER = ".kit-workspace"

_SERVICES = ("pacs", "fhir", "mllp")


def _addresses(settings: Settings, services: Sequence[str]) -> dict[str, str]:
    from kit.demo import configured_addresses

    every = configured_addresses(settings)
    wanted = [*services, "dicomweb"] if "pacs" in services else list(services)
    return {name: address for name, address in every.items() if name in wanted}


def _make_workspace(path: Path) -> str:
    """Create the workspace (0700, marked); say what was found there before."""
    note = ""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InvalidInputError(f"{path} exists and is not a folder; choose another workspace",
                                source="workspace")
    if path.is_dir():
        if (path / MARKER).is_file():
            shutil.rmtree(path)
            note = " (left over from an earlier run: emptied)"
        elif any(path.iterdir()):
            raise InvalidInputError(f"{path} exists, is not empty and is not a kit workspace (no {MARKER} "
                                    "file); choose another workspace or empty it", source="workspace")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        (path / MARKER).write_text("made by kit.notebook.connect; Session.close() removes this folder\n",
                                   encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot create the workspace {path}: {exc.strerror or exc}") from exc
    return note


@dataclasses.dataclass
class Session:
    """What a notebook runs against: settings, the embedded stack (if any), its workspace.

    Attributes
    ----------
    settings : Settings
        Client settings: the configured systems, or the embedded stack's addresses.
    description : str
        ``configured systems (/path/kit.toml)`` or ``embedded stack (started in this kernel)``.
    workspace : Path
        The notebook's one folder (absolute).
    stack : Stack or None
        The embedded stack this kernel started (None against configured systems).
    services : tuple of str
        The services the notebook uses (``pacs``, ``fhir``, ``mllp``).
    """

    settings: Settings
    description: str
    workspace: Path
    stack: Stack | None
    services: tuple[str, ...]
    note: str = ""
    #: the audit log this session records to (``[audit] path``), released by :meth:`close`
    audit_log: object | None = None

    @property
    def embedded(self) -> bool:
        """True when this kernel started the embedded stack (no configuration was found)."""
        return self.stack is not None

    def addresses(self) -> dict[str, str]:
        """``{service: address}`` of the systems in use, as ``kit serve`` prints them."""
        out = _addresses(self.settings, self.services)
        if self.stack is not None:  # the embedded stack: only what this kernel started
            out = {name: address for name, address in out.items() if name in self.stack.services}
        return out

    def __str__(self) -> str:
        lines = [self.description]
        lines += [f"  {name:<9} {address}" for name, address in self.addresses().items()]
        lines.append(f"workspace: {self.workspace}{self.note} (the last cell removes it)")
        return "\n".join(lines)

    @property
    def mllp_store(self) -> MessageStore | None:
        """The embedded MLLP listener's message store; None against a configured peer."""
        if self.stack is None or "mllp" not in self.stack.services:
            return None
        return getattr(self.stack.services["mllp"], "store", None)

    def embedded_only(self, what: str, echo: Callable[[str], None] = print) -> bool:
        """True on the embedded stack; against configured systems say that ``what`` is skipped.

        For steps that only make sense on the kit's own test systems (e.g.
        re-sending a message to show duplicate detection).
        """
        if self.embedded:
            return True
        echo(f"skipped against {self.description}: {what}")
        return False

    def hl7_messages(self, sent: Iterable[str | bytes], echo: Callable[[str], None] = print) -> list[str]:
        """The HL7 messages to tabulate: what the embedded listener stored, else what was sent.

        A configured MLLP peer (an interface engine) keeps what it receives and
        offers no way to read it back over MLLP; then the tables are built from
        the messages this notebook sent to it, and a sentence says so.
        """
        store = self.mllp_store
        if store is not None:
            return [str(m) for m in store.messages()["raw"].to_list()]
        out = [m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m) for m in sent]
        peer = self.addresses().get("mllp", "the configured MLLP peer")
        echo(f"{peer} keeps what it received (MLLP has no read-back): the tables below are built "
             f"from the {len(out)} messages this notebook sent it")
        return out

    def close(self, *, keep: bool = False) -> str:
        """Stop the embedded stack and remove the workspace (unless ``keep``); say what was done.

        Only a folder marked as a kit workspace is removed. Idempotent.
        """
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        if self.audit_log is not None:
            from kit.services.audit import release

            release(self.audit_log)  # type: ignore[arg-type]
            self.audit_log = None
        if keep:
            return f"kept the workspace {self.workspace}: remove it when done, it may hold patient data"
        if not self.workspace.exists():
            return f"workspace {self.workspace} already removed"
        if not (self.workspace / MARKER).is_file():
            raise InvalidInputError(f"{self.workspace} is not marked as a kit workspace: not removed",
                                    source="workspace")
        try:
            shutil.rmtree(self.workspace)
        except OSError as exc:
            raise StoreError(f"cannot remove the workspace {self.workspace}: {exc.strerror or exc}") from exc
        return f"removed the workspace {self.workspace}"


def connect(settings_file: str | os.PathLike[str] | None = None, *,
            workspace: str | os.PathLike[str] | None = None,
            services: Iterable[str] = _SERVICES) -> Session:
    """The systems to use (a kit.toml, else the embedded stack) and a fresh workspace folder.

    Parameters
    ----------
    settings_file : path-like, optional
        A kit.toml; default ``KIT_CONFIG``, then ``./kit.toml``, then the
        embedded stack started in this kernel.
    workspace : path-like, optional
        The notebook's folder (default ``./kit-workspace``). Created (0700) and
        marked; one left over from an interrupted run is emptied; an existing
        non-empty folder that is not a kit workspace is refused.
    services : iterable of str
        The services the notebook uses, any of ``pacs``, ``fhir``, ``mllp``: the
        embedded stack runs these only; the description names these only.

    Returns
    -------
    Session

    Raises
    ------
    ConfigError
        The settings file does not exist or has a wrong setting.
    InvalidInputError
        ``workspace`` exists and is not a kit workspace; an unknown service.
    """
    wanted = tuple(services)
    unknown = [s for s in wanted if s not in _SERVICES]
    if unknown or not wanted:
        raise InvalidInputError(f"services must be some of {', '.join(_SERVICES)}, got {list(wanted)}")
    settings = load_settings(settings_file)
    folder = Path(workspace if workspace is not None else DEFAULT_WORKSPACE).expanduser().absolute()
    note = _make_workspace(folder)
    log = None
    if settings.audit.enabled and settings.audit.path:  # record this kernel's accesses, as the CLI does
        from kit.services.audit import enable_configured

        log = enable_configured(settings)
    if settings.configured:
        return Session(settings, describe_source(settings), folder, None, wanted, note, log)
    from kit.stack import Stack

    changes: dict[str, object] = {f.name: 0 for f in dataclasses.fields(StackSettings)
                                  if f.name.endswith("_port")}  # every port ephemeral
    changes.update(host="127.0.0.1", data_dir=str(folder / "stack"))
    stack_settings = dataclasses.replace(settings.stack, **changes)  # type: ignore[arg-type]
    stack = Stack(stack_settings, services=wanted)
    try:
        stack.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Session(stack.client_settings(settings), f"{describe_source(None)} (started in this kernel)",
                   folder, stack, wanted, note, log)
