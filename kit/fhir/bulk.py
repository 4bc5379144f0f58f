"""FHIR Bulk Data export (``$export``, Bulk Data Access IG v2) to NDJSON and parquet, resumably.

:meth:`BulkExport.run` does the whole job: kick-off with
``Prefer: respond-async``, polling of the status URL (honouring ``Retry-After``,
showing ``X-Progress``), the completion manifest, streaming download of every
output file to disk (with the access token only if ``requiresAccessToken``, and
then only to the origins the client trusts: its base's, the vendor's
``file_hosts`` and ``trusted_origins``; a status or file URL anywhere else is
requested without credentials, see :meth:`kit.fhir.client.FhirClient.trusts`),
a line-count check against the manifest's ``count``, and conversion to one
parquet file per resource type through :func:`kit.fhir.frames_stream.files_to_parquet`
(the frames of :func:`kit.fhir.frames.to_frame`, in bounded memory).

It is resumable: the job's state (request, status URL, manifest, each file's
bytes and whether it is complete) lives in ``.kit-export.json`` in the output
folder, rewritten atomically after every step. Run the same export into the
same folder again after an interruption and it resumes polling, skips finished
files and continues a partial file with an HTTP ``Range`` request (or restarts
that one file if the server ignores ranges). Entries of the manifest's
``error`` array are downloaded and surfaced (by default as
:class:`~kit.errors.BulkExportError`).

What a server sends is checked before it is trusted (each failure is a
:class:`~kit.errors.BulkExportError`):

- a manifest ``type`` names files in the output folder, so it must be a plain
  resource type name (``[A-Z][A-Za-z]{0,63}``), never a path;
- a file may have at most ``max_file_bytes`` bytes (default :data:`MAX_FILE_BYTES`,
  counted as written, i.e. after any ``Content-Encoding``) and must arrive within
  ``download_timeout`` seconds (default :data:`DOWNLOAD_TIMEOUT`); a file over
  either limit is removed;
- a resumed file is appended to only when the server's ``206`` ``Content-Range``
  starts at the byte asked for and runs to the end of the file; a ``206`` from byte
  0 is taken as the whole file (written from scratch); any other range is refused
  and the partial file removed (the next run downloads it from the start). A
  ``416`` counts as "already complete" only if its ``Content-Range: bytes */size``
  equals the bytes on disk, else the partial file is removed and the run fails;
- every line of an output file must be a resource of the manifest's type (its
  top-level ``resourceType``), checked while its lines are counted in bounded
  memory, and each type's parquet file must have one row per downloaded line;
- a line of an ``error`` file that is not an OperationOutcome is reported as an
  error issue of its own (``diagnostics`` says which file and line).

Hand-written (no maintained Python Bulk Data client exists; fhir-kindling and
bulk-data-client are unmaintained or Node).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
import polars as pl

from kit._files import atomic_write_bytes
from kit.errors import BulkExportError, FhirError, InvalidInputError, KitError, PeerDisconnectedError
from kit.fhir._audit import audited_export
from kit.fhir.client import FhirClient, parse_retry_after
from kit.fhir.policy import origin
from kit.fhir.resources import outcome_issues, outcome_message

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "MAX_FILE_BYTES",
    "STATE_FILE",
    "BulkExport",
    "ExportJob",
    "ExportLevel",
    "ExportOutput",
    "ExportResult",
    "Manifest",
]

log = logging.getLogger(__name__)

#: Name of the state file kept in the output folder.
STATE_FILE = ".kit-export.json"
#: Largest file of an export downloaded (bytes as written to disk, after any
#: ``Content-Encoding``): 16 GiB, so a hostile or broken server cannot fill a workstation's disk.
MAX_FILE_BYTES: Final = 16 << 30
#: Seconds one file's download may take, from its request to its last byte (6 hours).
DOWNLOAD_TIMEOUT: Final = 6 * 3600.0
_NDJSON = "application/fhir+ndjson"
#: what a manifest ``type`` must look like: it names files in the output folder (no paths)
_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z]{0,63}", re.ASCII)
#: names Windows reserves for devices (``CON.000.ndjson`` is the console there)
_RESERVED: Final = frozenset({"CON", "PRN", "AUX", "NUL"})
#: bytes of a downloaded file read at a time when its lines are counted
_READ: Final = 1 << 20
#: bytes of one line held to check its resourceType; of a longer line only its start is kept
_LINE_HEAD: Final = 1 << 20
#: a line whose first member is its resourceType (how servers write them): checked without parsing
_LEADING_TYPE: Final = re.compile(rb'[ \t\r]*\{[ \t\r]*"resourceType"[ \t\r]*:[ \t\r]*"([A-Za-z0-9]*)"')
_CONTENT_RANGE: Final = re.compile(r"bytes[ ]+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)", re.ASCII)
_UNSATISFIED_RANGE: Final = re.compile(r"bytes[ ]+\*/(\d{1,20})", re.ASCII)


class ExportLevel(enum.StrEnum):
    """Which ``$export`` endpoint: the whole system, all patients, or one Group."""

    SYSTEM = "system"
    PATIENT = "patient"
    GROUP = "group"


@dataclasses.dataclass(frozen=True)
class ExportOutput:
    """One file listed in a manifest (``output`` or ``error``)."""

    type: str
    url: str
    count: int | None = None

    def __post_init__(self) -> None:
        if not self.type or urlsplit(self.url).scheme not in ("http", "https"):
            raise BulkExportError(f"manifest entry needs a type and an http(s) url, got "
                                  f"{self.type!r} {self.url!r}")
        if not _TYPE_NAME.fullmatch(self.type) or self.type.upper() in _RESERVED:
            # it names the downloaded file: a path ("../x", "/etc/x", "a/b") would write elsewhere
            raise BulkExportError(f"manifest entry type {self.type[:80]!r} is not a resource type name "
                                  f"([A-Z][A-Za-z]*); refusing to download {self.url!r}")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The completion manifest of an export."""

    transaction_time: str
    request: str
    requires_access_token: bool
    output: tuple[ExportOutput, ...]
    error: tuple[ExportOutput, ...] = ()

    @classmethod
    def from_json(cls, body: Any, *, base: str) -> Manifest:
        """Parse and check a manifest (relative URLs are resolved against ``base``).

        Raises
        ------
        BulkExportError
            No ``output`` array, an entry that is not an object, has no http(s) URL,
            or whose ``type`` is not a plain resource type name (it names a file), or
            two types that differ only in case (they would share a file where names
            are case-insensitive).
        """
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise BulkExportError("the completion manifest has no output array", peer=base)

        def files(key: str) -> tuple[ExportOutput, ...]:
            out = []
            for item in body.get(key) or []:
                if not isinstance(item, dict):
                    raise BulkExportError(f"manifest {key} entry is not an object", peer=base)
                count = item.get("count")
                try:
                    url = urljoin(base + "/", str(item.get("url", "")))
                except ValueError:
                    url = ""
                if origin(url) is None:  # "http://[::1/x", "ftp://...": no http(s) URL to download
                    raise BulkExportError(f"manifest {key} entry url {str(item.get('url'))[:200]!r} is "
                                          "not an http(s) URL", peer=base)
                try:
                    out.append(ExportOutput(str(item.get("type", "")), url,
                                            int(count) if isinstance(count, int) else None))
                except BulkExportError as exc:
                    raise BulkExportError(f"manifest {key}: {exc}", peer=base) from exc
            return tuple(out)

        output, error = files("output"), files("error")
        names: dict[str, str] = {}
        for item in output + error:
            if names.setdefault(item.type.lower(), item.type) != item.type:
                raise BulkExportError(f"manifest types {names[item.type.lower()]!r} and {item.type!r} differ "
                                      "only in case", peer=base)
        return cls(str(body.get("transactionTime", "")), str(body.get("request", "")),
                   bool(body.get("requiresAccessToken", False)), output, error)

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON (for the state file)."""
        def files(items: tuple[ExportOutput, ...]) -> list[dict[str, Any]]:
            return [{"type": f.type, "url": f.url, **({"count": f.count} if f.count is not None else {})}
                    for f in items]

        return {"transactionTime": self.transaction_time, "request": self.request,
                "requiresAccessToken": self.requires_access_token,
                "output": files(self.output), "error": files(self.error)}


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """A finished export on disk.

    Attributes
    ----------
    folder : Path
        The output folder.
    manifest : Manifest
        The server's completion manifest.
    files : polars.DataFrame
        One row per downloaded file: ``resource_type``, ``path``, ``bytes``, ``resources``.
    parquet : dict of str to Path
        One parquet file per resource type.
    errors : list of dict
        OperationOutcome issues from the manifest's ``error`` files.
    """

    folder: Path
    manifest: Manifest
    files: pl.DataFrame
    parquet: Mapping[str, Path]
    errors: Sequence[dict[str, Any]] = ()

    def frame(self, resource_type: str) -> pl.DataFrame:
        """The exported resources of one type as a DataFrame (from its parquet file)."""
        if resource_type not in self.parquet:
            raise InvalidInputError(f"the export has no {resource_type} resources; it has "
                                    f"{', '.join(self.parquet) or 'none'}")
        return pl.read_parquet(self.parquet[resource_type])


class _State:
    """The resumable state of one export in its folder, saved atomically."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise BulkExportError(f"{self.path} is not valid JSON; delete it to start over") from exc

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode(), fsync=True)


def _untrusted_hint(client: FhirClient, url: str, status: int) -> str:
    """Why a 401/403 may come from a URL on an origin that gets no credentials."""
    if status not in (401, 403) or client.trusts(url):
        return ""
    return (f" ({urlsplit(url).netloc} is not the FHIR server's origin, so no credentials were sent; "
            "if it belongs to the server, add it to FhirClient(trusted_origins=...))")


def _progress_bar(enabled: bool, desc: str, total: int | None = None, unit: str = "it") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False,
                disable=not (enabled and sys.stderr.isatty()))


class ExportJob:
    """A running export, known by its status URL (``Content-Location`` of the kick-off).

    Parameters
    ----------
    client : FhirClient
        The client that kicked it off (auth, timeouts, retries).
    status_url : str
        The job's status URL.
    """

    def __init__(self, client: FhirClient, status_url: str) -> None:
        if urlsplit(status_url).scheme not in ("http", "https"):
            raise BulkExportError(f"status URL {status_url!r} is not an http(s) URL", peer=client.base)
        self.client = client
        self.status_url = status_url
        #: the last ``X-Progress`` text of the server
        self.progress: str | None = None

    def __repr__(self) -> str:
        return f"ExportJob({self.status_url!r})"

    def poll(self) -> tuple[Manifest | None, float | None]:
        """Ask once: ``(manifest, None)`` when complete, ``(None, retry_after)`` while running."""
        c = self.client
        response = c.send("GET", self.status_url, headers={"Accept": "application/json"}, check=False)
        status = response.status_code
        if status == 202:
            self.progress = response.headers.get("X-Progress")
            return None, parse_retry_after(response.headers.get("Retry-After"))
        if status == 200:
            try:
                body = orjson.loads(response.read())
            except orjson.JSONDecodeError as exc:
                raise BulkExportError("the completion manifest is not JSON", peer=c.base) from exc
            return Manifest.from_json(body, base=c.base), None
        response.read()
        detail = ""
        try:
            body = orjson.loads(response.content)
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                detail = f": {outcome_message(body)}"
        except orjson.JSONDecodeError:
            detail = f": {' '.join(response.text[:160].split())}" if response.text.strip() else ""
        gone = " (the job is gone: expired or cancelled; start a new export)" if status in (404, 410) else ""
        raise BulkExportError(f"export job failed with HTTP {status}{detail}{gone}"
                              f"{_untrusted_hint(c, self.status_url, status)}", status_code=status,
                              peer=c.base)

    def wait(self, *, timeout: float = 3600.0, poll_interval: float = 2.0, max_interval: float = 60.0,
             progress: bool = True) -> Manifest:
        """Poll until the manifest is ready (waiting what ``Retry-After`` asks, within limits).

        Raises
        ------
        BulkExportError
            The job failed, or is still running after ``timeout`` seconds (run
            again into the same folder to resume).
        """
        deadline = time.monotonic() + timeout
        with _progress_bar(progress, "export") as bar:
            while True:
                manifest, retry_after = self.poll()
                if manifest is not None:
                    return manifest
                if self.progress:
                    bar.set_description_str(f"export: {self.progress}")
                bar.update(1)
                wait = min(max_interval, max(poll_interval, retry_after or 0.0))
                if time.monotonic() + wait > deadline:
                    raise BulkExportError(f"export still running after {timeout:.0f} s "
                                          f"({self.progress or 'no progress reported'})",
                                          peer=self.client.base)
                time.sleep(wait)

    def cancel(self) -> None:
        """Ask the server to cancel the job and delete its files (``DELETE`` the status URL)."""
        self.client.send("DELETE", self.status_url, headers={"Accept": "application/json"})


class BulkExport:
    """Bulk Data ``$export`` through a :class:`FhirClient`.

    Parameters
    ----------
    client : FhirClient
        The FHIR server's client.

    Examples
    --------
    >>> result = BulkExport(client).run("export/", types=["Patient", "Observation"])  # doctest: +SKIP
    >>> result.frame("Observation")  # doctest: +SKIP
    """

    def __init__(self, client: FhirClient) -> None:
        self.client = client

    def kickoff(self, level: ExportLevel | str = ExportLevel.SYSTEM, *, group_id: str | None = None,
                types: Sequence[str] | None = None, since: dt.datetime | str | None = None,
                type_filters: Sequence[str] = ()) -> ExportJob:
        """Start an export; return the job to poll.

        Parameters
        ----------
        level : {"system", "patient", "group"}
            ``[base]/$export``, ``[base]/Patient/$export`` or ``[base]/Group/[id]/$export``.
        group_id : str, optional
            The Group for ``level="group"``.
        types : sequence of str, optional
            ``_type``: resource types to export (default all).
        since : datetime (with time zone) or str, optional
            ``_since``: only resources changed after this instant.
        type_filters : sequence of str
            ``_typeFilter`` searches, e.g. ``"Observation?category=laboratory"``.
        """
        level = ExportLevel(level)
        if (level is ExportLevel.GROUP) != (group_id is not None):
            raise InvalidInputError("group_id is needed for, and only for, level='group'")
        if level.value not in {b.value for b in self.client.profile.bulk_levels}:
            log.warning("%s does not usually offer %s-level $export", self.client.profile.display_name,
                        level.value)
        path = {"system": "$export", "patient": "Patient/$export",
                "group": f"Group/{group_id}/$export"}[level.value]
        params = [("_outputFormat", _NDJSON)]
        if types:
            params.append(("_type", ",".join(types)))
        if since is not None:
            if isinstance(since, dt.datetime):
                if since.tzinfo is None:
                    raise InvalidInputError("since needs a time zone (an instant)")
                since = since.isoformat()
            params.append(("_since", since))
        params.extend(("_typeFilter", f) for f in type_filters)
        response = self.client.send("GET", self.client.url(path), params=params,
                                    headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise BulkExportError(f"kick-off answered HTTP {response.status_code} "
                                  f"{'without' if not location else 'with'} Content-Location; "
                                  "expected 202 Accepted with one", status_code=response.status_code,
                                  peer=self.client.base)
        return ExportJob(self.client, urljoin(self.client.base + "/", location))

    @audited_export
    def run(self, folder: str | os.PathLike[str], level: ExportLevel | str = ExportLevel.SYSTEM, *,
            group_id: str | None = None, types: Sequence[str] | None = None,
            since: dt.datetime | str | None = None, type_filters: Sequence[str] = (),
            timeout: float = 3600.0, poll_interval: float = 2.0, progress: bool = True,
            restart: bool = False, fail_on_errors: bool = True, max_file_bytes: int = MAX_FILE_BYTES,
            download_timeout: float = DOWNLOAD_TIMEOUT) -> ExportResult:
        """Export into ``folder`` (kick-off, poll, download, convert), resuming a previous run.

        Parameters
        ----------
        folder : path
            Output folder: ``<Type>.<n>.ndjson`` files, ``<Type>.parquet`` per
            type, and the state file.
        level, group_id, types, since, type_filters
            As for :meth:`kickoff`.
        timeout : float
            Seconds to wait for the server to finish the job.
        poll_interval : float
            Seconds between status polls when the server gives no ``Retry-After``.
        progress : bool
            Show progress bars on a terminal.
        restart : bool
            Ignore (and replace) a previous run's state in ``folder``.
        fail_on_errors : bool
            Raise :class:`~kit.errors.BulkExportError` if the manifest lists
            errors (after downloading everything); else return them in ``errors``
            (a line of an error file that is not an OperationOutcome becomes an issue
            whose ``diagnostics`` names the file and line).
        max_file_bytes : int
            Most bytes one file may have on disk (default :data:`MAX_FILE_BYTES`, 16 GiB).
        download_timeout : float
            Most seconds one file's download may take (default :data:`DOWNLOAD_TIMEOUT`,
            6 hours); it is checked as bytes arrive, so it may be overrun by up to the
            client's ``timeout``.

        Returns
        -------
        ExportResult

        Raises
        ------
        BulkExportError
            The job failed or timed out; the manifest is malformed (e.g. a ``type``
            that is not a resource type name: nothing is downloaded); a file answered
            an HTTP error, is larger than ``max_file_bytes`` or took longer than
            ``download_timeout`` (its partial file is removed); the server answered a
            resumed download with the wrong range (the partial file is removed: run
            again to download it from the start); a file holds another resource type
            than the manifest says, or another number of resources; the manifest lists
            errors and ``fail_on_errors``.
        PeerDisconnectedError
            A download broke off (run again to resume it).
        InvalidInputError
            ``folder`` holds another export, or ``max_file_bytes`` or
            ``download_timeout`` is not positive.
        FhirValidationError
            A downloaded file is not valid FHIR NDJSON (from the conversion to parquet).
        """
        if max_file_bytes < 1 or not download_timeout > 0:
            raise InvalidInputError(f"max_file_bytes and download_timeout must be positive (got "
                                    f"{max_file_bytes}, {download_timeout})")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        since_text = since.isoformat() if isinstance(since, dt.datetime) else since
        request = {"base": self.client.base, "level": ExportLevel(level).value, "group_id": group_id,
                   "types": list(types or []), "since": since_text, "type_filters": list(type_filters)}
        state = _State(out)
        if restart or not state.data:
            state.data = {"version": 1, "request": request, "status_url": None, "manifest": None,
                          "files": {}}
        elif state.data.get("request") != request:
            raise InvalidInputError(f"{out} holds a different export ({state.data.get('request')}); "
                                    "use another folder or restart=True")
        if state.data["manifest"] is None:
            if state.data["status_url"] is None:
                job = self.kickoff(level, group_id=group_id, types=types, since=since,
                                   type_filters=type_filters)
                state.data["status_url"] = job.status_url
                state.save()
            else:
                log.info("resuming export %s", state.data["status_url"])
                job = ExportJob(self.client, state.data["status_url"])
            manifest = job.wait(timeout=timeout, poll_interval=poll_interval, progress=progress)
            state.data["manifest"] = manifest.to_json()
            state.save()
        else:
            manifest = Manifest.from_json(state.data["manifest"], base=self.client.base)
        return self._download_all(out, manifest, state, progress, fail_on_errors,
                                  _Limits(max_file_bytes, download_timeout))

    # -- downloading ------------------------------------------------------------------------

    def _download_all(self, out: Path, manifest: Manifest, state: _State, progress: bool,
                      fail_on_errors: bool, limits: _Limits) -> ExportResult:
        files: dict[str, dict[str, Any]] = state.data["files"]
        numbers: dict[str, int] = {}
        for kind, items in (("output", manifest.output), ("error", manifest.error)):
            for item in items:
                n = numbers.get(f"{kind}:{item.type}", 0)
                numbers[f"{kind}:{item.type}"] = n + 1
                name = f"{item.type}.{n:03d}.ndjson"
                if kind == "error":
                    name = "error." + name
                entry = files.setdefault(item.url, {"path": name, "type": item.type, "kind": kind,
                                                    "bytes": 0, "done": False})
                if entry.get("path") != name or entry.get("type") != item.type:
                    raise BulkExportError(f"{state.path} lists {item.url} as {entry.get('path')!r}, not "
                                          f"{name!r}; use restart=True", peer=self.client.base)
                if entry["done"] and (out / entry["path"]).is_file():
                    continue
                entry["done"] = False
                state.save()
                try:
                    entry["bytes"], lines = self._download(
                        item.url, out / entry["path"], manifest.requires_access_token, progress, limits,
                        item.type if kind == "output" else None)
                except BaseException:
                    part = out / (entry["path"] + ".part")
                    entry["bytes"] = part.stat().st_size if part.is_file() else 0
                    state.save()
                    raise
                if item.count is not None and lines != item.count:
                    raise BulkExportError(f"{item.url} had {lines} resources, the manifest says "
                                          f"{item.count}", peer=self.client.base)
                entry["resources"] = lines
                entry["done"] = True
                state.save()
        parquet = self._convert(out, files)
        errors: list[dict[str, Any]] = []
        for entry in files.values():
            if entry.get("kind") == "error":
                errors.extend(_error_issues(out / entry["path"]))
        rows = [{"resource_type": e["type"], "path": str(out / e["path"]), "bytes": e["bytes"],
                 "resources": e.get("resources")} for e in files.values() if e.get("kind") == "output"]
        frame = pl.DataFrame(rows, schema={"resource_type": pl.String, "path": pl.String,
                                           "bytes": pl.Int64, "resources": pl.Int64})
        result = ExportResult(out, manifest, frame, parquet, errors)
        if (errors or manifest.error) and fail_on_errors:
            first = errors[0].get("diagnostics", "") if errors else "see the error files"
            raise BulkExportError(f"the export reported {len(errors) or len(manifest.error)} errors "
                                  f"(files kept in {out}): {first}", peer=self.client.base)
        return result

    def _download(self, url: str, path: Path, authenticate: bool, progress: bool, limits: _Limits,
                  resource_type: str | None) -> tuple[int, int]:
        """Stream ``url`` to ``path`` via ``path.part`` (resuming it); return (bytes, lines).

        With ``resource_type``, every line must be a resource of that type.
        """
        part = path.with_name(path.name + ".part")
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Accept": _NDJSON}
        if have:
            headers["Range"] = f"bytes={have}-"
        deadline = time.monotonic() + limits.seconds
        response = self.client.send("GET", url, headers=headers, stream=True, authenticate=authenticate,
                                    check=False)
        peer = self.client.base
        try:
            status = response.status_code
            if status == 416 and have:  # "nothing from there on": whole only if the server's size is ours
                match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
                if match is None or int(match[1]) != have:
                    part.unlink(missing_ok=True)
                    raise BulkExportError(
                        f"downloading {path.name}: the server refused to resume at byte {have} (HTTP 416, "
                        f"Content-Range {response.headers.get('Content-Range', '')[:80]!r}, not "
                        f"'bytes */{have}'); the partial file was removed, run again to download it "
                        "from the start", status_code=416, peer=peer)
            elif status in (200, 206):
                if status == 206:
                    have = self._check_range(response, path, part, have)
                elif have:
                    log.info("%s: server ignored Range; downloading it again", path.name)
                    have = 0
                total = _content_length(response)
                if (total is not None and have + total > limits.max_bytes
                        and response.headers.get("Content-Encoding", "identity").lower() == "identity"):
                    raise BulkExportError(f"{path.name} has {have + total} bytes, more than the "
                                          f"{limits.max_bytes} of max_file_bytes", peer=peer)
                over = ""
                with open(part, "ab" if have else "wb") as fh, _progress_bar(
                        progress, path.name, total + have if total is not None else None, "B") as bar:
                    bar.update(have)
                    got = 0
                    try:
                        for chunk in response.iter_bytes():
                            if have + got + len(chunk) > limits.max_bytes:
                                over = f"is larger than the {limits.max_bytes} bytes of max_file_bytes"
                                break
                            fh.write(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                            if time.monotonic() > deadline:
                                over = (f"took longer than the {limits.seconds:g} s of download_timeout "
                                        f"({have + got} bytes so far)")
                                break
                    except httpx.HTTPError as exc:
                        raise PeerDisconnectedError(
                            f"download of {path.name} broke off after {have + got} bytes "
                            f"({type(exc).__name__}); run again to resume", peer=peer) from exc
                    finally:
                        fh.flush()
                        os.fsync(fh.fileno())
                if over:
                    part.unlink(missing_ok=True)
                    raise BulkExportError(f"downloading {path.name}: {url} {over}; the partial file "
                                          "was removed", peer=peer)
            else:
                hint = _untrusted_hint(self.client, url, status) if authenticate else ""
                try:
                    self.client.raise_for_status(response)
                except FhirError as exc:
                    raise BulkExportError(f"downloading {path.name} failed: {exc}{hint}",
                                          status_code=status, peer=peer) from exc
                raise BulkExportError(f"downloading {path.name} answered HTTP {status}",
                                      status_code=status, peer=peer)
        finally:
            response.close()
        lines = 0
        try:
            for number, head, _whole in _lines(part):
                lines += 1
                if resource_type is None:
                    continue
                found = _top_type(head, _whole)
                if found is not None and found != resource_type:
                    raise BulkExportError(f"{path.name} ({url}), line {number}: a {found[:80]!r} resource, "
                                          f"but the manifest says the file holds {resource_type}",
                                          peer=peer)
        except OSError as exc:
            raise BulkExportError(f"cannot read {part}: {exc}", peer=peer) from exc
        os.replace(part, path)
        return path.stat().st_size, lines

    def _check_range(self, response: httpx.Response, path: Path, part: Path, have: int) -> int:
        """Where a 206 answer's bytes go: ``have`` (appended) or 0 (the whole file again).

        Anything else (no or a malformed ``Content-Range``, another start, a range that
        stops short of the end) removes the partial file and raises: appending it
        would corrupt the file, and the next run then downloads it from the start.
        """
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is not None:
            start, end = int(match[1]), int(match[2])
            size = None if match[3] == "*" else int(match[3])
            whole_tail = end >= start and (size is None or end + 1 == size)
            if whole_tail and start == have:
                return have
            if whole_tail and start == 0:
                log.warning("%s: server answered a request for bytes %d- with the file from byte 0; "
                            "downloading it again", path.name, have)
                return 0
        part.unlink(missing_ok=True)
        raise BulkExportError(f"downloading {path.name}: asked for bytes {have}- and the server answered "
                              f"206 with Content-Range {header[:80]!r}; the partial file was removed, run "
                              "again to download it from the start", status_code=206,
                              peer=self.client.base)

    def _convert(self, out: Path, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Path]:
        # streamed (kit.fhir.frames_stream): memory bounded by a block, whatever the export's size
        from kit.fhir.frames_stream import files_to_parquet

        by_type: dict[str, list[Path]] = {}
        for entry in files.values():
            if entry.get("kind") == "output":
                by_type.setdefault(entry["type"], []).append(out / entry["path"])
        expected: dict[str, int] = {}
        for entry in files.values():
            if entry.get("kind") == "output":
                expected[entry["type"]] = expected.get(entry["type"], 0) + int(entry.get("resources") or 0)
        parquet: dict[str, Path] = {}
        for rtype, paths in sorted(by_type.items()):
            parquet.update(files_to_parquet(list(sorted(paths)), out, resource_type=rtype))
            if rtype == "Bundle" or rtype not in parquet:
                continue  # a Bundle line's rows are its entries'
            rows = pl.scan_parquet(parquet[rtype]).select(pl.len()).collect().item()
            if rows != expected[rtype]:
                raise BulkExportError(f"{parquet[rtype].name} has {rows} rows, but the {rtype} files "
                                      f"({', '.join(p.name for p in sorted(paths))}) hold {expected[rtype]} "
                                      f"resources: a line is not a {rtype}", peer=self.client.base)
        return parquet


@dataclasses.dataclass(frozen=True)
class _Limits:
    """What one file's download may take: bytes on disk and seconds."""

    max_bytes: int
    seconds: float


def _content_length(response: httpx.Response) -> int | None:
    text = response.headers.get("Content-Length", "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, line or its first _LINE_HEAD bytes, whether whole)`` of each non-blank line.

    Reads :data:`_READ` bytes at a time, so memory stays bounded however long a line is.
    """
    number = 1
    head = bytearray()
    whole = True
    with open(path, "rb") as fh:
        while block := fh.read(_READ):
            pieces = block.split(b"\n")
            for i, piece in enumerate(pieces):
                room = _LINE_HEAD - len(head)
                if len(piece) > room:
                    whole = False
                if room > 0:
                    head += piece[:room]
                if i == len(pieces) - 1:
                    break  # the line goes on in the next block
                if not whole or head.strip():
                    yield number, bytes(head), whole
                number += 1
                head.clear()
                whole = True
    if not whole or head.strip():
        yield number, bytes(head), whole


def _top_type(head: bytes, whole: bool) -> str | None:
    """The resourceType of a line (None if it cannot be told: not JSON, no type, too long)."""
    match = _LEADING_TYPE.match(head)
    if match is not None:
        return match[1].decode("ascii")
    if not whole:
        return None
    try:
        item = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None  # the conversion reports it
    found = item.get("resourceType") if isinstance(item, dict) else None
    return found if isinstance(found, str) else None


def _error_issues(path: Path) -> list[dict[str, Any]]:
    """The issues of an ``error`` file; a line that is not an OperationOutcome becomes an issue itself."""
    issues: list[dict[str, Any]] = []

    def unreadable(number: int, why: str) -> None:
        issues.append({"severity": "error", "code": "processing",
                       "diagnostics": f"error file {path.name}, line {number}: {why}"})

    for number, line, whole in _lines(path):
        if not whole:
            unreadable(number, f"longer than {_LINE_HEAD} bytes, not read")
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable(number, "not JSON")
            continue
        if not isinstance(item, dict) or item.get("resourceType") != "OperationOutcome":
            unreadable(number, f"not an OperationOutcome (a {type(item).__name__})")
            continue
        try:
            found = outcome_issues(item)
        except (KitError, TypeError, ValueError, AttributeError):
            found = []
        if found:
            issues.extend(found)
        else:
            unreadable(number, "an OperationOutcome without readable issues")
    return issues
