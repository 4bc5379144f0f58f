"""DICOMweb requests and answers of the embedded server, without the HTTP (pure).

- QIDO-RS (PS3.18 10.6): :func:`parse_qido` turns the query parameters
  (``{attributeID}={value}`` by keyword, tag or ``Seq.Keyword`` path,
  ``includefield``, ``fuzzymatching``, ``limit``, ``offset``) and the UIDs in the
  path into the same C-FIND identifier the DIMSE PACS matches
  (:mod:`kit.dicom.matching`), so QIDO-RS and C-FIND answer alike.
  Fuzzy matching is not supported: ``fuzzymatching=true`` gets literal matching
  and the standard's warning. :func:`qido_json` writes one match as DICOM JSON.
- WADO-RS (PS3.18 10.4): :func:`negotiate` picks the transfer syntax from the
  ``Accept`` ranges; :func:`parse_frames` reads a frame list.
- STOW-RS (PS3.18 10.5): :func:`split_part10` reads a part's File Meta
  Information; :func:`stow_response` builds the Store Instances Response
  (ReferencedSOPSequence, FailedSOPSequence with FailureReason) and its HTTP
  status: 200 all stored, 202 some, 409 none.

Default return attributes follow PS3.18 Tables 10.6.3-3 to -5, without those the
store cannot know (TimezoneOffsetFromUTC, the Performed Procedure Step and
Request Attributes of a series). Written by hand: no library maps QIDO
parameters onto a C-FIND identifier or builds a STOW response.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterable, Sequence
from io import BytesIO
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from kit.dicom.matching import COMPUTED_KEYS, LEVEL_KEYS, check_identifier, parse_range
from kit.dicom.query import QueryLevel
from kit.dicom.received import is_uid
from kit.dicom.web_multipart import MediaType
from kit.errors import DicomFileError, DicomWebRequestError, InvalidInputError

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "DEFAULT_FIELDS",
    "MAX_LIMIT",
    "NATIVE_SYNTAXES",
    "OUT_OF_RESOURCES",
    "QidoQuery",
    "check_uid",
    "negotiate",
    "parse_frames",
    "parse_qido",
    "qido_json",
    "split_part10",
    "stow_response",
]

#: STOW-RS FailureReason values (PS3.18 10.5.3, PS3.4 B.2.3).
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: Most matches one QIDO-RS answer holds (a larger ``limit`` is cut, with a warning).
MAX_LIMIT = 10_000
_MAX_OFFSET = 10**9
_MAX_PARAMS = 200
_MAX_META = 64 * 1024  # bytes of File Meta Information accepted

_ST, _SE, _IM = QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE
#: Attributes returned without ``includefield``, by level (PS3.18 Tables 10.6.3-3 to -5).
DEFAULT_FIELDS: dict[QueryLevel, tuple[str, ...]] = {
    _ST: ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
          "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
          "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
          "NumberOfStudyRelatedInstances"),
    _SE: ("Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID", "SeriesNumber",
          "NumberOfSeriesRelatedInstances"),
    _IM: ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL", "InstanceNumber",
          "Rows", "Columns", "BitsAllocated", "NumberOfFrames"),
}
#: Attributes the server fills in itself (never matched).
_SERVER_FIELDS = ("RetrieveURL", "InstanceAvailability")
_RESERVED = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def check_uid(value: str, what: str = "UID") -> str:
    """``value`` if it is a UID (PS3.5 9.1), else :class:`~kit.errors.DicomWebRequestError` (400)."""
    if not is_uid(value):
        raise DicomWebRequestError(f"{what} {value[:70]!r} is not a UID")
    return value


@dataclasses.dataclass
class QidoQuery:
    """One QIDO-RS search: the C-FIND identifier and the paging asked for.

    Attributes
    ----------
    level : QueryLevel
        STUDY, SERIES or IMAGE.
    identifier : Dataset
        QueryRetrieveLevel, the matching keys and the empty return keys.
    server_fields : tuple of str
        Return keys the server fills (RetrieveURL, InstanceAvailability).
    limit : int or None
        At most this many matches (None: up to :data:`MAX_LIMIT`).
    offset : int
        Matches skipped first.
    warnings : list of str
        Texts for ``Warning: 299`` headers (fuzzy matching not performed, ...).
    """

    level: QueryLevel
    identifier: Dataset
    server_fields: tuple[str, ...]
    limit: int | None
    offset: int
    warnings: list[str]


def _attribute(name: str) -> tuple[int, str]:
    """(tag, VR) of a keyword or an 8-hex-digit tag; 400 when unknown or private."""
    if _HEX_TAG.fullmatch(name):
        tag = int(name, 16)
    else:
        found = tag_for_keyword(name)
        if found is None:
            raise DicomWebRequestError(f"unknown attribute {name[:64]!r} in the query")
        tag = found
    if (tag >> 16) % 2 == 1:
        raise DicomWebRequestError(f"private attribute {tag:08X} cannot be queried")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise DicomWebRequestError(f"unknown attribute {name[:64]!r} in the query") from None
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or (tag >> 16) in (0x0002, 0x7FE0):
        raise DicomWebRequestError(f"attribute {name[:64]!r} ({vr}) cannot be queried")
    return tag, vr.split(" or ")[0]


def _value(vr: str, raw: str, name: str) -> Any:
    """A query value as the identifier holds it ('' for universal matching)."""
    if raw == "":
        return None if vr in ("US", "UL", "SS", "SL", "FL", "FD") else ""
    if vr == "UI":
        uids = [u.strip() for u in re.split(r"[,\\]", raw) if u.strip()]
        for uid in uids:
            check_uid(uid, name)
        return uids[0] if len(uids) == 1 else uids
    if vr in ("US", "UL", "SS", "SL"):
        try:
            return int(raw)
        except ValueError:
            raise DicomWebRequestError(f"{name}: {raw[:40]!r} is not a number") from None
    if vr in ("FL", "FD"):
        try:
            return float(raw)
        except ValueError:
            raise DicomWebRequestError(f"{name}: {raw[:40]!r} is not a number") from None
    if vr in ("DA", "TM", "DT"):
        for item in raw.split("\\"):
            if item.strip("*"):
                try:
                    parse_range(item, vr)
                except InvalidInputError as exc:
                    raise DicomWebRequestError(f"{name}: {exc}") from exc
    return raw.split("\\") if "\\" in raw else raw


def _put(ds: Dataset, path: Sequence[str], raw: str | None, *, full: str) -> None:
    """Set the element a (possibly dotted) attribute path names: a value, or empty if ``raw`` is None."""
    tag, vr = _attribute(path[0])
    if len(path) > 1:
        if vr != "SQ":
            raise DicomWebRequestError(f"{path[0]} in {full[:64]!r} is not a sequence")
        element = ds.get(tag)
        if element is None or element.VR != "SQ":
            element = DataElement(tag, "SQ", DicomSequence([Dataset()]))
            ds.add(element)
        if not element.value:
            element.value = DicomSequence([Dataset()])
        _put(element.value[0], path[1:], raw, full=full)
        return
    if vr == "SQ":
        if raw:
            raise DicomWebRequestError(f"sequence {path[0]} matches through its items: use {path[0]}.Keyword")
        if tag not in ds:
            ds.add(DataElement(tag, "SQ", DicomSequence()))
        return
    if raw is None:
        if tag not in ds:
            ds.add(DataElement(tag, vr, None if vr in ("US", "UL", "SS", "SL", "FL", "FD") else ""))
        return
    if tag in ds and ds[tag].value not in (None, ""):
        raise DicomWebRequestError(f"{full[:64]} is given twice")
    value = _value(vr, raw, full)
    try:  # wildcards and ranges are not values of the VR: no validation warnings
        element = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    except (ValueError, TypeError, OverflowError) as exc:  # what pydicom cannot hold: DS ':', IS 'x', AT 'q'
        raise DicomWebRequestError(f"{full[:64]}: {raw[:40]!r} is not a value of VR {vr}") from exc
    ds.add(element)


def _keyword_level(keyword: str) -> QueryLevel | None:
    for level in QueryLevel:
        if keyword in LEVEL_KEYS[level] or keyword in COMPUTED_KEYS[level]:
            return level
    return None


def _count(raw: str, name: str, high: int) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) > high:
        raise DicomWebRequestError(f"{name} must be a whole number from 0 to {high}, got {raw[:20]!r}")
    return int(raw)


def parse_qido(level: QueryLevel, params: Sequence[tuple[str, str]], *, study_uid: str | None = None,
               series_uid: str | None = None) -> QidoQuery:
    """The C-FIND identifier and paging of a QIDO-RS search.

    Parameters
    ----------
    level : QueryLevel
        STUDY (``/studies``), SERIES (``/series``, ``/studies/{uid}/series``) or
        IMAGE (``/instances`` and below a study or series).
    params : sequence of (name, value)
        The query parameters as sent (repeats kept).
    study_uid, series_uid : str, optional
        UIDs named in the path (matching keys).

    Raises
    ------
    DicomWebRequestError
        400: unknown or private attribute, an attribute given twice, a key below
        the level, a bad date/time range, a bad ``limit``/``offset``.
    """
    if level is QueryLevel.PATIENT:
        raise DicomWebRequestError("QIDO-RS has no patient level")
    if len(params) > _MAX_PARAMS:
        raise DicomWebRequestError(f"more than {_MAX_PARAMS} query parameters")
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    limit: int | None = None
    offset = 0
    warnings: list[str] = []
    includes: list[str] = []
    server: list[str] = []
    for name, raw in params:
        key = name.strip()
        if key.lower() in _RESERVED:
            key = key.lower()
            if key == "limit":
                limit = _count(raw.strip(), "limit", _MAX_OFFSET)
            elif key == "offset":
                offset = _count(raw.strip(), "offset", _MAX_OFFSET)
            elif key == "fuzzymatching":
                if raw.strip().lower() not in ("true", "false"):
                    raise DicomWebRequestError(f"fuzzymatching must be true or false, got {raw[:20]!r}")
                if raw.strip().lower() == "true":
                    warnings.append("The fuzzymatching parameter is not supported. "
                                    "Only literal matching has been performed.")
            else:
                includes.extend(v.strip() for v in raw.split(",") if v.strip())
            continue
        path = key.split(".")
        if len(path) > 4 or not all(path):
            raise DicomWebRequestError(f"attribute path {key[:64]!r} is not usable")
        if path[0] in _SERVER_FIELDS or path[0] in ("00081190", "00080056"):
            raise DicomWebRequestError(f"{path[0]} cannot be matched")
        top = keyword_for_tag(_attribute(path[0])[0])
        found = _keyword_level(top)
        if found is not None and found.depth > level.depth:
            raise DicomWebRequestError(f"{top} is a {found.value.lower()}-level attribute; it cannot "
                                       f"filter a {level.value.lower()}-level search")
        _put(ds, path, raw, full=key)
    for keyword, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if uid is not None:
            given = ds[keyword] if keyword in ds else None
            if given is not None and given.value not in (None, "") and str(given.value) != uid:
                raise DicomWebRequestError(f"{keyword} in the query differs from the one in the path")
            setattr(ds, keyword, check_uid(uid, keyword))
    fields = list(DEFAULT_FIELDS[level])
    for upper in (_ST, _SE):
        scoped = {_ST: study_uid, _SE: series_uid}[upper]
        if upper.depth < level.depth and scoped is None:  # PS3.18 10.6.3.3.1: the levels above too
            fields += [k for k in DEFAULT_FIELDS[upper] if k not in COMPUTED_KEYS[upper]]
    for item in includes:
        if item.lower() == "all":
            fields += [k for lv in QueryLevel if lv.depth <= level.depth for k in LEVEL_KEYS[lv]]
            fields += list(COMPUTED_KEYS[level])
        else:
            fields.append(item)
    for item in fields:
        if item in _SERVER_FIELDS or item in ("00081190", "00080056"):
            keyword = item if item in _SERVER_FIELDS else keyword_for_tag(int(item, 16))
            if keyword not in server:
                server.append(keyword)
            continue
        _put(ds, item.split(".")[:4], None, full=item)
    try:
        check_identifier(ds)
    except InvalidInputError as exc:
        raise DicomWebRequestError(str(exc)) from exc
    return QidoQuery(level, ds, tuple(server), limit, offset, warnings)


def qido_json(match: Dataset, query: QidoQuery, retrieve_url: str) -> dict[str, Any]:
    """One QIDO-RS match as DICOM JSON, with the server-filled fields it asked for."""
    out = Dataset()
    for element in match:
        if element.keyword != "QueryRetrieveLevel":
            out.add(element)
    if "InstanceAvailability" in query.server_fields:
        out.InstanceAvailability = "ONLINE"
    if "RetrieveURL" in query.server_fields:
        out.add(DataElement(0x00081190, "UR", retrieve_url))
    result: dict[str, Any] = out.to_json_dict(suppress_invalid_tags=True)
    return result


def negotiate(ranges: Iterable[MediaType], part_type: str, default_syntax: str | None) -> str | None:
    """The transfer syntax a WADO-RS multipart answer uses: a UID, or None for "as stored".

    Parameters
    ----------
    ranges : iterable of MediaType
        The ``Accept`` ranges, best first (:func:`kit.dicom.web_multipart.parse_accept`).
    part_type : str
        The media type of the parts (``application/dicom``, ``application/octet-stream``).
    default_syntax : str or None
        The transfer syntax when a range names the part type without one (PS3.18 8.7.3.5.2:
        Explicit VR Little Endian).

    Raises
    ------
    DicomWebRequestError
        406 when no range accepts a ``multipart/related`` answer of ``part_type``.
    """
    for media in ranges:
        if media.type == "multipart/related" or media.type in ("*/*", "multipart/*"):
            inner = MediaType(media.params.get("type", "*/*" if media.type != "multipart/related"
                                               else part_type).strip().lower())
            if not inner.matches(part_type):
                continue
            syntax = media.params.get("transfer-syntax", "").strip()
            if syntax == "*" or (not syntax and inner.type != part_type):
                return None
            return syntax or default_syntax
    raise DicomWebRequestError(f'no acceptable media type: this resource is multipart/related; '
                               f'type="{part_type}"', status_code=406)


def parse_frames(text: str, count: int) -> list[int]:
    """Frame numbers (1-based) from a WADO-RS frame list such as ``1,3,5``.

    Raises
    ------
    DicomWebRequestError
        400 for a malformed list or a frame listed twice, 404 for a frame the instance does not have.
    """
    items = text.split(",")
    if len(items) > 10_000 or not all(i.strip().isascii() and i.strip().isdigit() and len(i.strip()) <= 9
                                       for i in items):
        raise DicomWebRequestError(f"not a frame list: {text[:40]!r}")
    frames = [int(i) for i in items]
    for frame in frames:
        if not 1 <= frame <= count:
            raise DicomWebRequestError(f"frame {frame} does not exist (the instance has {count})",
                                       status_code=404)
    if len(set(frames)) < len(frames):  # PS3.18 8.3.5.1: "non-duplicate frame numbers"; 1,1,1,...
        raise DicomWebRequestError("a frame is listed more than once")  # made 524 MB of one 512 KB frame
    return frames


def split_part10(data: bytes | memoryview) -> tuple[FileMetaDataset, int]:
    """The File Meta Information of a DICOM Part 10 file and the offset where its data set starts.

    Raises
    ------
    DicomFileError
        No preamble and ``DICM`` prefix, no (or a bad) group length, or meta that does not parse.
    """
    if len(data) < 144 or bytes(data[128:132]) != b"DICM":
        raise DicomFileError("not a DICOM Part 10 file (no 128-byte preamble and DICM prefix)")
    head = bytes(data[132:144])
    if head[:6] != b"\x02\x00\x00\x00UL" or struct.unpack_from("<H", head, 6)[0] != 4:
        raise DicomFileError("the file meta information does not start with its group length")
    length = struct.unpack_from("<I", head, 8)[0]
    end = 144 + length
    if length > _MAX_META or end > len(data):
        raise DicomFileError(f"file meta group length {length} does not fit the file")
    try:
        meta = read_dataset(BytesIO(bytes(data[132:end])), is_implicit_VR=False, is_little_endian=True)
        file_meta = FileMetaDataset(meta)
        syntax = str(file_meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:  # pydicom raises many types on bad meta
        raise DicomFileError(f"cannot read the file meta information: {exc}") from exc
    if any(tag >> 16 != 0x0002 for tag in file_meta.keys()):
        raise DicomFileError("the file meta information holds elements outside group 0002")
    if not syntax:
        raise DicomFileError("the file meta information has no TransferSyntaxUID")
    return file_meta, end


def stow_response(stored: Sequence[tuple[str, str, str]], failed: Sequence[tuple[str, str, int]],
                  retrieve_url: str | None) -> tuple[int, dict[str, Any]]:
    """The Store Instances Response (PS3.18 10.5.3) and its HTTP status.

    Parameters
    ----------
    stored : sequence of (sop_class_uid, sop_instance_uid, retrieve_url)
    failed : sequence of (sop_class_uid, sop_instance_uid, failure_reason)
    retrieve_url : str or None
        The study's URL when every stored instance belongs to one study.

    Returns
    -------
    (int, dict)
        200 when all were stored, 202 when some were, 409 when none was; the DICOM JSON body.
    """
    ds = Dataset()
    if retrieve_url and stored:
        ds.add(DataElement(0x00081190, "UR", retrieve_url))
    if failed:
        items = []
        for sop_class, sop_uid, reason in failed:
            item = Dataset()
            if sop_class:
                item.ReferencedSOPClassUID = sop_class
            if sop_uid:
                item.ReferencedSOPInstanceUID = sop_uid
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = DicomSequence(items)
    if stored:
        refs = []
        for sop_class, sop_uid, url in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_uid
            item.add(DataElement(0x00081190, "UR", url))
            refs.append(item)
        ds.ReferencedSOPSequence = DicomSequence(refs)
    status = 409 if not stored else 202 if failed else 200
    return status, ds.to_json_dict()


#: Transfer syntaxes a stored instance can be re-encoded into on the fly.
NATIVE_SYNTAXES = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
