"""The manifest of an exported research dataset, and its check against a folder (pure: no I/O).

A dataset folder written by :func:`kit.cohort.export.export_dataset` ends with
``manifest.json``: what was asked (the cohort's rows, or ``"all"``), from which
systems (their addresses, user names and passwords removed), when (UTC), by which
kit version, with which key (its fingerprint, never the key), what was written
(counts) and the SHA-256 and size of every other file in the folder (relative
POSIX paths, sorted). :func:`compare` checks a listing of the folder against it
and names every file that is missing, extra or changed.

The checksummed set is every file but ``manifest.json`` itself; the manifest's
``created`` time is therefore the one value that differs between two exports of
the same sources with the same key: every checksummed file is byte-identical.

This module hashes nothing and reads nothing: the caller lists the folder
(:func:`kit.cohort.export.scan_folder`) and hands the entries in.
Hand-written: a small JSON record; no library defines a dataset manifest kit
could adopt (BagIt's manifest-sha256.txt has no room for the request, the
sources and the key fingerprint).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from kit.errors import InvalidInputError, VerificationError

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "FileEntry",
    "Manifest",
    "Verification",
    "build_manifest",
    "compare",
    "from_json",
    "public_address",
    "to_json",
]

#: The manifest's file name in the dataset folder (not in its own checksummed set).
MANIFEST_NAME = "manifest.json"
#: The manifest format this module writes and reads.
FORMAT = "kit-research-dataset/1"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_MAX_PATH = 1024


def _check_path(path: object) -> str:
    """A relative POSIX path inside the folder, or InvalidInputError."""
    if not isinstance(path, str) or not path or len(path) > _MAX_PATH:
        raise InvalidInputError(f"a dataset file path is a non-empty string of at most {_MAX_PATH} "
                                f"characters, not {path!r:.80}")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(f"a dataset file path is relative, POSIX, without . or .. parts: "
                                f"{path!r:.200}")
    return path


@dataclasses.dataclass(frozen=True, order=True)
class FileEntry:
    """One file of a dataset: relative POSIX path, size in bytes, SHA-256 (hex).

    A listing marks what is not a regular file (a symbolic link, a device) with
    ``size=-1`` and ``sha256=""``: it never equals a manifest entry.
    """

    path: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        _check_path(self.path)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < -1:
            raise InvalidInputError(f"{self.path}: size is a whole number of bytes, not {self.size!r:.40}")
        if not isinstance(self.sha256, str) or not (_SHA256.fullmatch(self.sha256) or
                                                     (self.sha256 == "" and self.size == -1)):
            raise InvalidInputError(f"{self.path}: sha256 is 64 lower-case hex digits, not "
                                    f"{self.sha256!r:.80}")


def public_address(address: str) -> str:
    """An address as it may be recorded: user name, password, query and fragment removed.

    ``http://user:secret@ehr/fhir/R4?token=x`` gives ``http://ehr/fhir/R4``;
    ``dicom://AET@host:104`` keeps its AE title (not a credential); a path is kept.
    """
    if not isinstance(address, str):
        raise InvalidInputError(f"an address is a string, not {type(address).__name__}")
    text = address.strip()
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # "http://[ehr/fhir": Invalid IPv6 URL
        raise InvalidInputError(f"not an address: {exc}") from exc
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    if parts.scheme == "dicom" and parts.username and parts.password is None:
        netloc = f"{parts.username}@{netloc}"  # the AE title
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a dataset folder holds and where it came from (see the module docstring).

    Attributes
    ----------
    request : tuple of mapping, or "all"
        The cohort's rows as given (every value as text), or ``"all"``: every
        patient the sources hold.
    sources : mapping of str to str
        ``{"pacs": "dicom://AET@host:port", "fhir": "http://...", "hl7": "/path/mllp.db"}``;
        no credentials (:func:`public_address`).
    notes : tuple of str
        What the export could not do and said (e.g. no HL7 store configured).
    created : str
        When (UTC, ISO 8601 with ``Z``).
    kit_version : str
    key_fingerprint : str
        :attr:`kit.deid.pseudonyms.Pseudonymiser.fingerprint` (16 hex), never the key.
    counts : mapping of str to int
        Patients, studies, series, instances, FHIR resources, HL7 messages, what
        de-identification removed (by reason).
    files : tuple of FileEntry
        Every file but the manifest, sorted by path.
    """

    request: tuple[Mapping[str, str], ...] | str
    sources: Mapping[str, str]
    notes: tuple[str, ...]
    created: str
    kit_version: str
    key_fingerprint: str
    counts: Mapping[str, int]
    files: tuple[FileEntry, ...]
    format: str = FORMAT

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise InvalidInputError(f"unknown manifest format {self.format!r:.60} (this kit reads {FORMAT})")
        if isinstance(self.request, str):
            if self.request != "all":
                raise InvalidInputError("a manifest's request is the cohort's rows or 'all'")
        else:
            rows = tuple(self.request)
            if not all(isinstance(r, Mapping) and all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in r.items()) for r in rows):
                raise InvalidInputError("a manifest's request rows map column names to text")
            object.__setattr__(self, "request", tuple(MappingProxyType(dict(r)) for r in rows))
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.sources.items()):
            raise InvalidInputError("a manifest's sources map names to addresses (text)")
        object.__setattr__(self, "sources", MappingProxyType({k: public_address(v)
                                                              for k, v in self.sources.items()}))
        if not all(isinstance(n, str) for n in self.notes):
            raise InvalidInputError("a manifest's notes are text")
        object.__setattr__(self, "notes", tuple(self.notes))
        try:
            when = dt.datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except (AttributeError, TypeError, ValueError):
            raise InvalidInputError(f"a manifest's created time is ISO 8601, not "
                                    f"{self.created!r:.60}") from None
        if when.utcoffset() != dt.timedelta(0):
            raise InvalidInputError(f"a manifest's created time is UTC, not {self.created!r:.60}")
        if not isinstance(self.kit_version, str) or not self.kit_version:
            raise InvalidInputError("a manifest names the kit version")
        if not isinstance(self.key_fingerprint, str) or not _FINGERPRINT.fullmatch(self.key_fingerprint):
            raise InvalidInputError("a manifest's key_fingerprint is 16 lower-case hex digits")
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                   for k, v in self.counts.items()):
            raise InvalidInputError("a manifest's counts map names to whole numbers")
        object.__setattr__(self, "counts", MappingProxyType(dict(sorted(self.counts.items()))))
        files = tuple(sorted(self.files))
        if not all(isinstance(f, FileEntry) for f in files):
            raise InvalidInputError("a manifest's files are FileEntry")
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise InvalidInputError("a manifest lists a file twice")
        if MANIFEST_NAME in paths:
            raise InvalidInputError(f"{MANIFEST_NAME} is not in its own checksummed set")
        object.__setattr__(self, "files", files)

    @property
    def size(self) -> int:
        """Bytes in the checksummed files."""
        return sum(f.size for f in self.files)


def build_manifest(*, request: Iterable[Mapping[str, Any]] | str, sources: Mapping[str, str],
                   files: Iterable[FileEntry], key_fingerprint: str, counts: Mapping[str, int],
                   kit_version: str, created: dt.datetime, notes: Iterable[str] = ()) -> Manifest:
    """A :class:`Manifest`; rows' values become text, ``created`` must be timezone-aware.

    Raises
    ------
    InvalidInputError
        A value of the wrong kind (a naive time, a path outside the folder, ...).
    """
    if not isinstance(created, dt.datetime) or created.tzinfo is None:
        raise InvalidInputError("created is a timezone-aware datetime")
    when = created.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    rows: tuple[Mapping[str, str], ...] | str
    if isinstance(request, str):
        rows = request
    else:
        rows = tuple({str(k): "" if v is None else str(v) for k, v in row.items()} for row in request)
    return Manifest(rows, dict(sources), tuple(notes), when, kit_version, key_fingerprint, dict(counts),
                    tuple(files))


def _plain(manifest: Manifest) -> dict[str, Any]:
    request: Any = manifest.request
    if not isinstance(request, str):
        request = [dict(r) for r in request]
    return {"format": manifest.format, "created": manifest.created, "kit_version": manifest.kit_version,
            "key_fingerprint": manifest.key_fingerprint, "request": request,
            "sources": dict(manifest.sources), "notes": list(manifest.notes), "counts": dict(manifest.counts),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files]}


def to_json(manifest: Manifest) -> bytes:
    """The manifest as JSON bytes: keys sorted, two-space indent, a final newline (deterministic)."""
    return orjson.dumps(_plain(manifest), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def from_json(data: bytes | str) -> Manifest:
    """Read a manifest written by :func:`to_json`.

    Raises
    ------
    VerificationError
        Not JSON, or not a manifest of this format (the reason is the first line).
    """
    try:
        body = orjson.loads(data)
        if not isinstance(body, dict):
            raise InvalidInputError("the manifest is not a JSON object")
        missing = {"format", "created", "kit_version", "key_fingerprint", "request", "sources", "notes",
                   "counts", "files"} - set(body)
        if missing:
            raise InvalidInputError(f"the manifest has no {', '.join(sorted(missing))}")
        raw_files = body["files"]
        if not isinstance(raw_files, list) or not all(isinstance(f, dict) for f in raw_files):
            raise InvalidInputError("the manifest's files are a list of objects")
        files = tuple(FileEntry(f.get("path"), f.get("size"), f.get("sha256")) for f in raw_files)
        request = body["request"]
        if not isinstance(request, str) and not isinstance(request, list):
            raise InvalidInputError("the manifest's request is a list of rows or 'all'")
        for name in ("sources", "counts"):
            if not isinstance(body[name], dict):
                raise InvalidInputError(f"the manifest's {name} is an object")
        if not isinstance(body["notes"], list):
            raise InvalidInputError("the manifest's notes are a list")
        return Manifest(request if isinstance(request, str) else tuple(request), body["sources"],
                        tuple(body["notes"]), body["created"], body["kit_version"], body["key_fingerprint"],
                        body["counts"], files, body["format"])
    except orjson.JSONDecodeError as exc:
        raise VerificationError(f"{MANIFEST_NAME} is not JSON: {exc}") from exc
    except InvalidInputError as exc:
        raise VerificationError(f"{MANIFEST_NAME} is not a dataset manifest: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Verification:
    """What :func:`compare` found: paths missing, extra and changed (each sorted)."""

    missing: tuple[str, ...]
    extra: tuple[str, ...]
    changed: tuple[str, ...]
    checked: int

    @property
    def ok(self) -> bool:
        """True when the folder holds exactly the files of the manifest, unchanged."""
        return not (self.missing or self.extra or self.changed)

    def differences(self) -> list[str]:
        """One line per difference: ``missing: path``, ``extra: path``, ``changed: path``."""
        return ([f"missing: {p}" for p in self.missing] + [f"extra: {p}" for p in self.extra]
                + [f"changed: {p}" for p in self.changed])

    def summary(self) -> str:
        """One line: ``N files verified`` or what is missing, extra and changed (first few named)."""
        if self.ok:
            return f"{self.checked} files verified"
        said = []
        for what, paths in (("missing", self.missing), ("extra", self.extra), ("changed", self.changed)):
            if paths:
                shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
                said.append(f"{len(paths)} {what} ({shown})")
        return "dataset differs from its manifest: " + "; ".join(said)

    def check(self) -> None:
        """Raise :class:`~kit.errors.VerificationError` (the summary, then every difference) unless ok."""
        if not self.ok:
            raise VerificationError(self.summary(), differences=self.differences())


def compare(manifest: Manifest, listing: Iterable[FileEntry]) -> Verification:
    """Compare a listing of the folder (every file but the manifest) with the manifest.

    A file is ``changed`` when its size or SHA-256 differs (or it is no longer a
    regular file), ``missing`` when listed in the manifest only, ``extra`` when
    found in the folder only.
    """
    found: dict[str, FileEntry] = {}
    for entry in listing:
        if not isinstance(entry, FileEntry):
            raise InvalidInputError("a listing holds FileEntry")
        if entry.path != MANIFEST_NAME:
            found[entry.path] = entry
    expected = {f.path: f for f in manifest.files}
    missing = tuple(sorted(p for p in expected if p not in found))
    extra = tuple(sorted(p for p in found if p not in expected))
    changed = tuple(sorted(p for p, f in expected.items() if p in found and found[p] != f))
    return Verification(missing, extra, changed, len(expected))
