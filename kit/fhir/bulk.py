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
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
import polars as pl

from kit._files import atomic_write_bytes
from kit.errors import BulkExportError, FhirError, InvalidInputError, PeerDisconnectedError
from kit.fhir._audit import audited_export
from kit.fhir.client import FhirClient, parse_retry_after
from kit.fhir.resources import outcome_issues, outcome_message

__all__ = [
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
_NDJSON = "application/fhir+ndjson"


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
        """Parse and check a manifest (relative URLs are resolved against ``base``)."""
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise BulkExportError("the completion manifest has no output array", peer=base)

        def files(key: str) -> tuple[ExportOutput, ...]:
            out = []
            for item in body.get(key) or []:
                if not isinstance(item, dict):
                    raise BulkExportError(f"manifest {key} entry is not an object", peer=base)
                count = item.get("count")
                url = urljoin(base + "/", str(item.get("url", "")))
                out.append(ExportOutput(str(item.get("type", "")), url,
                                        int(count) if isinstance(count, int) else None))
            return tuple(out)

        return cls(str(body.get("transactionTime", "")), str(body.get("request", "")),
                   bool(body.get("requiresAccessToken", False)), files("output"), files("error"))

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
            restart: bool = False, fail_on_errors: bool = True) -> ExportResult:
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
            errors (after downloading everything); else return them in ``errors``.

        Returns
        -------
        ExportResult
        """
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
        return self._download_all(out, manifest, state, progress, fail_on_errors)

    # -- downloading ------------------------------------------------------------------------

    def _download_all(self, out: Path, manifest: Manifest, state: _State, progress: bool,
                      fail_on_errors: bool) -> ExportResult:
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
                if entry["done"] and (out / entry["path"]).is_file():
                    continue
                entry["done"] = False
                state.save()
                try:
                    entry["bytes"], lines = self._download(item.url, out / entry["path"],
                                                           manifest.requires_access_token, progress)
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
                for line in (out / entry["path"]).read_bytes().splitlines():
                    if line.strip():
                        errors.extend(outcome_issues(orjson.loads(line)))
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

    def _download(self, url: str, path: Path, authenticate: bool, progress: bool) -> tuple[int, int]:
        """Stream ``url`` to ``path`` via ``path.part`` (resuming it); return (bytes, lines)."""
        part = path.with_name(path.name + ".part")
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Accept": _NDJSON}
        if have:
            headers["Range"] = f"bytes={have}-"
        response = self.client.send("GET", url, headers=headers, stream=True, authenticate=authenticate,
                                    check=False)
        try:
            if response.status_code == 416 and have:  # the part file is already whole
                response.read()
            elif response.status_code in (200, 206):
                mode = "ab" if response.status_code == 206 and have else "wb"
                if mode == "wb" and have:
                    log.info("%s: server ignored Range; downloading it again", path.name)
                    have = 0
                total = response.headers.get("Content-Length")
                with open(part, mode) as fh, _progress_bar(progress, path.name,
                                                           int(total) + have if total else None, "B") as bar:
                    bar.update(have)
                    got = 0
                    try:
                        for chunk in response.iter_bytes():
                            fh.write(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                    except httpx.HTTPError as exc:
                        raise PeerDisconnectedError(
                            f"download of {path.name} broke off after {have + got} bytes "
                            f"({type(exc).__name__}); run again to resume", peer=self.client.base) from exc
                    finally:
                        fh.flush()
                        os.fsync(fh.fileno())
            else:
                hint = _untrusted_hint(self.client, url, response.status_code) if authenticate else ""
                try:
                    self.client.raise_for_status(response)
                except FhirError as exc:
                    raise BulkExportError(f"downloading {path.name} failed: {exc}{hint}",
                                          status_code=response.status_code, peer=self.client.base) from exc
                raise BulkExportError(f"downloading {path.name} answered HTTP {response.status_code}",
                                      status_code=response.status_code, peer=self.client.base)
        finally:
            response.close()
        lines = 0
        with open(part, "rb") as fh:
            for line in fh:
                if line.strip():
                    lines += 1
        os.replace(part, path)
        return path.stat().st_size, lines

    def _convert(self, out: Path, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Path]:
        # streamed (kit.fhir.frames_stream): memory bounded by a block, whatever the export's size
        from kit.fhir.frames_stream import files_to_parquet

        by_type: dict[str, list[Path]] = {}
        for entry in files.values():
            if entry.get("kind") == "output":
                by_type.setdefault(entry["type"], []).append(out / entry["path"])
        parquet: dict[str, Path] = {}
        for rtype, paths in sorted(by_type.items()):
            parquet.update(files_to_parquet(list(sorted(paths)), out, resource_type=rtype))
        return parquet
