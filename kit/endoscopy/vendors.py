"""Endoscopy vendor profiles: what each tower sends, accepts and expects, as data (pure).

A profile is one frozen :class:`VendorProfile`: default AE title, modality,
the SOP classes and transfer syntaxes it sends (as a Storage SCU) and accepts,
the transfer syntaxes kit uses when it captures for that tower, the pattern of
its video stream's URL, HL7 quirks and frame sizes. There are no code branches
per vendor anywhere in kit: capture, worklist and results read these values.

Every value says where it comes from (:attr:`VendorProfile.sources`, one
:class:`Source` per field):

``standard``
    Defined by the DICOM standard itself (SOP Class and Transfer Syntax UIDs,
    PS3.4/PS3.5/PS3.6; Modality ``ES``, PS3.3 C.7.3.1.1.1). Holds for every vendor.
``documented``
    Stated in the vendor's published DICOM conformance statement named in
    :attr:`VendorProfile.conformance_statement`.
``assumption``
    Not found in anything the vendor publishes that we could read: a
    plausible default that MUST be checked on site (with the hospital's
    DICOM/PACS team or the vendor's service engineer).
``site``
    Set by the hospital in kit.toml (``[endoscopy] overrides``), see :func:`apply_overrides`.

Most vendor-specific values are assumptions: the conformance statements that
could be found (Karl Storz AIDA, PENTAX IMAGINA) were not readable past their
opening pages, Olympus and Fujifilm endoscopy statements were not found. The
README's "Endoscopy" section lists which values are which.

Written by hand: no library carries endoscopy vendor defaults.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

from kit.errors import InvalidInputError

__all__ = [
    "ACCEPTED_OVERRIDES",
    "JPEG_BASELINE",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "MPEG2_MPML",
    "MPEG4_HP41",
    "MPEG4_HP41_BD",
    "MPEG4_HP42_2D",
    "PROFILES",
    "STILL_TRANSFER_SYNTAXES",
    "VIDEO_ENDOSCOPIC_IMAGE_STORAGE",
    "VIDEO_TRANSFER_SYNTAXES",
    "VL_ENDOSCOPIC_IMAGE_STORAGE",
    "Source",
    "VendorProfile",
    "apply_overrides",
    "check_overrides",
    "profile",
]

# -- the standard's UIDs (PS3.6 Annex A) ---------------------------------------------------------
VL_ENDOSCOPIC_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.77.1.1"
VIDEO_ENDOSCOPIC_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
MODALITY_WORKLIST_FIND: Final = "1.2.840.10008.5.1.4.31"
MPPS: Final = "1.2.840.10008.3.1.2.3.3"
STORAGE_COMMITMENT: Final = "1.2.840.10008.1.20.1"
VERIFICATION: Final = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
JPEG_BASELINE: Final = "1.2.840.10008.1.2.4.50"
MPEG2_MPML: Final = "1.2.840.10008.1.2.4.100"
MPEG4_HP41: Final = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_BD: Final = "1.2.840.10008.1.2.4.103"
MPEG4_HP42_2D: Final = "1.2.840.10008.1.2.4.104"

#: Transfer syntaxes kit can write a still in.
STILL_TRANSFER_SYNTAXES: Final = (JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN)
#: Transfer syntaxes kit can write a clip in (H.264 elementary streams encoded with PyAV).
VIDEO_TRANSFER_SYNTAXES: Final = (MPEG4_HP41, MPEG4_HP42_2D)

SourceKind = Literal["standard", "documented", "assumption", "site"]
_KINDS: Final = ("standard", "documented", "assumption", "site")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a profile value comes from: ``kind`` (standard, documented, assumption, site) and a note."""

    kind: SourceKind
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidInputError(f"Source.kind: one of {_KINDS}, not {self.kind!r}")


#: The profile fields a value is given for (everything except ``name`` and ``sources``).
_VALUE_FIELDS: Final = (
    "manufacturer", "products", "modality", "station_aet", "still_sop_class", "video_sop_class",
    "scu_sop_classes", "scp_sop_classes", "sends_transfer_syntaxes", "accepts_transfer_syntaxes",
    "still_transfer_syntax", "video_transfer_syntax", "stream_url_pattern", "frame_sizes",
    "frame_rate", "character_set", "hl7_quirks", "worklist_notes", "conformance_statement",
)

_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _bad(name: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"{name}: {message}", source="vendor profile")


def _uids(name: str, values: tuple[str, ...]) -> None:
    for v in values:
        if not isinstance(v, str) or len(v) > 64 or not _UID.match(v):
            raise _bad(name, f"not a DICOM UID: {v!r}")


@dataclasses.dataclass(frozen=True)
class VendorProfile:
    """One endoscopy vendor's defaults; every value with its :class:`Source`.

    Attributes
    ----------
    name : str
        Key of the profile (``olympus``, ``pentax``, ``fujifilm``, ``karl_storz``, ``generic``).
    manufacturer, products : str, tuple of str
        Who makes the towers and which products the values are about.
    modality : str
        DICOM Modality of the captured instances (``ES``).
    station_aet : str
        Default AE title of the tower (its Scheduled Station AE Title in the worklist).
    still_sop_class, video_sop_class : str
        SOP classes kit writes stills and clips as.
    scu_sop_classes, scp_sop_classes : tuple of str
        SOP classes the tower uses (sends, queries) and provides (accepts).
    sends_transfer_syntaxes, accepts_transfer_syntaxes : tuple of str
        Transfer syntaxes the tower proposes when it sends and accepts when it receives.
    still_transfer_syntax, video_transfer_syntax : str
        The transfer syntaxes kit captures in for this vendor
        (:data:`STILL_TRANSFER_SYNTAXES`, :data:`VIDEO_TRANSFER_SYNTAXES`).
    stream_url_pattern : str
        The live video's URL, with ``{host}`` (and ``{port}``, ``{channel}``) to fill in.
    frame_sizes : tuple of (width, height)
        Video output sizes; the first is the default.
    frame_rate : float
        Frames per second of the video output.
    character_set : str
        Specific Character Set the tower writes and expects in the worklist.
    hl7_quirks, worklist_notes : tuple of str
        What to know about its HL7 orders/results and its worklist queries.
    conformance_statement : str
        The vendor document the ``documented`` values come from (or that should be asked for).
    sources : mapping of str to Source
        Where each value comes from; every value field has one.
    """

    name: str
    manufacturer: str
    products: tuple[str, ...]
    modality: str
    station_aet: str
    still_sop_class: str
    video_sop_class: str
    scu_sop_classes: tuple[str, ...]
    scp_sop_classes: tuple[str, ...]
    sends_transfer_syntaxes: tuple[str, ...]
    accepts_transfer_syntaxes: tuple[str, ...]
    still_transfer_syntax: str
    video_transfer_syntax: str
    stream_url_pattern: str
    frame_sizes: tuple[tuple[int, int], ...]
    frame_rate: float
    character_set: str
    hl7_quirks: tuple[str, ...]
    worklist_notes: tuple[str, ...]
    conformance_statement: str
    sources: Mapping[str, Source]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", str(self.name)):
            raise _bad("name", f"lower-case letters, digits and _ (up to 32), not {self.name!r}")
        if not isinstance(self.station_aet, str) or not _AE.match(self.station_aet) \
                or not self.station_aet.strip():
            raise _bad("station_aet", f"not an AE title: {self.station_aet!r}")
        if self.modality != "ES":
            raise _bad("modality", f"endoscopy instances are modality ES, not {self.modality!r}")
        for name in ("scu_sop_classes", "scp_sop_classes", "sends_transfer_syntaxes",
                     "accepts_transfer_syntaxes", "products", "hl7_quirks", "worklist_notes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _uids("still_sop_class", (self.still_sop_class, self.video_sop_class))
        _uids("scu_sop_classes", self.scu_sop_classes + self.scp_sop_classes)
        _uids("transfer syntaxes", self.sends_transfer_syntaxes + self.accepts_transfer_syntaxes)
        if self.still_transfer_syntax not in STILL_TRANSFER_SYNTAXES:
            raise _bad("still_transfer_syntax", f"kit writes stills in {STILL_TRANSFER_SYNTAXES}, "
                                                f"not {self.still_transfer_syntax!r}")
        if self.video_transfer_syntax not in VIDEO_TRANSFER_SYNTAXES:
            raise _bad("video_transfer_syntax", f"kit writes clips in {VIDEO_TRANSFER_SYNTAXES}, "
                                                f"not {self.video_transfer_syntax!r}")
        sizes = tuple(tuple(s) for s in self.frame_sizes)
        if not sizes or any(len(s) != 2 or not all(isinstance(v, int) and 16 <= v <= 8192 for v in s)
                            for s in sizes):
            raise _bad("frame_sizes", f"(width, height) pairs of 16-8192 pixels, not {self.frame_sizes!r}")
        object.__setattr__(self, "frame_sizes", sizes)
        if isinstance(self.frame_rate, bool) or not isinstance(self.frame_rate, (int, float)) \
                or not 1 <= self.frame_rate <= 240:
            raise _bad("frame_rate", f"1-240 frames per second, not {self.frame_rate!r}")
        object.__setattr__(self, "frame_rate", float(self.frame_rate))
        if "{host}" not in self.stream_url_pattern:
            raise _bad("stream_url_pattern", "must contain {host}")
        sources = dict(self.sources)
        missing = [f for f in _VALUE_FIELDS if f not in sources]
        unknown = [f for f in sources if f not in _VALUE_FIELDS]
        if missing or unknown:
            raise _bad("sources", f"one Source per value field; missing {missing}, unknown {unknown}")
        if any(not isinstance(s, Source) for s in sources.values()):
            raise _bad("sources", "values are Source objects")
        object.__setattr__(self, "sources", MappingProxyType(sources))

    def __hash__(self) -> int:
        return hash((self.name, tuple(getattr(self, f) for f in _VALUE_FIELDS if f != "sources")))

    def values(self, kind: SourceKind | None = None) -> dict[str, Any]:
        """The value fields (optionally only those whose source is ``kind``), by name."""
        return {f: getattr(self, f) for f in _VALUE_FIELDS if kind is None or self.sources[f].kind == kind}

    def assumptions(self) -> list[str]:
        """Names of the values to check on site (source ``assumption``)."""
        return [f for f in _VALUE_FIELDS if self.sources[f].kind == "assumption"]

    @property
    def frame_size(self) -> tuple[int, int]:
        """The default (width, height)."""
        return self.frame_sizes[0]

    def stream_url(self, host: str, *, port: int | None = None, channel: int = 1) -> str:
        """The stream URL for a tower at ``host`` (``port`` defaults to the pattern's own)."""
        fields = {"host": host, "channel": channel}
        pattern = self.stream_url_pattern
        if port is not None:
            fields["port"] = port
        elif "{port}" in pattern:
            raise InvalidInputError(f"the {self.name} stream URL {pattern!r} needs a port")
        return pattern.format(**fields)


# -- the profiles --------------------------------------------------------------------------------
_STD = Source("standard", "DICOM PS3.6 Annex A / PS3.3")
_ES = Source("standard", "PS3.3 C.7.3.1.1.1: ES = Endoscopy")


def _assume(note: str) -> Source:
    return Source("assumption", note)


_COMMON_SCU = (VL_ENDOSCOPIC_IMAGE_STORAGE, VIDEO_ENDOSCOPIC_IMAGE_STORAGE, MODALITY_WORKLIST_FIND,
               VERIFICATION)


def _base(name: str, **values: Any) -> VendorProfile:
    """A profile with the standard's values and ``values`` (each given as (value, Source))."""
    defaults: dict[str, tuple[Any, Source]] = {
        "modality": ("ES", _ES),
        "still_sop_class": (VL_ENDOSCOPIC_IMAGE_STORAGE, _STD),
        "video_sop_class": (VIDEO_ENDOSCOPIC_IMAGE_STORAGE, _STD),
        "scu_sop_classes": (_COMMON_SCU, _assume("the usual set for a capture system: stills, "
                                                 "video, worklist, echo; check the statement")),
        "scp_sop_classes": ((VERIFICATION,), _assume("a tower usually answers C-ECHO only")),
        "sends_transfer_syntaxes": ((JPEG_BASELINE, MPEG4_HP41, EXPLICIT_VR_LITTLE_ENDIAN),
                                    _assume("JPEG stills and H.264 video are the common choice")),
        "accepts_transfer_syntaxes": ((EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN),
                                      _assume("worklist/echo answers in the uncompressed syntaxes")),
        "still_transfer_syntax": (JPEG_BASELINE, _assume("JPEG baseline, as most PACS store endoscopy")),
        "video_transfer_syntax": (MPEG4_HP41, _assume("H.264 High Profile / Level 4.1 (Sup 42/149)")),
        "frame_sizes": (((1920, 1080), (1280, 720)), _assume("HD video output of current towers")),
        "frame_rate": (30.0, _assume("30 fps progressive (50/60 Hz regions differ)")),
        "character_set": ("ISO_IR 100", _assume("Latin-1; check for ISO_IR 192 (UTF-8)")),
        "hl7_quirks": ((), _assume("none known")),
        "worklist_notes": ((), _assume("none known")),
    }
    defaults.update(values)
    return VendorProfile(name=name, **{k: v for k, (v, _) in defaults.items()},
                         sources={k: s for k, (_, s) in defaults.items()})


PROFILES: Mapping[str, VendorProfile] = MappingProxyType({p.name: p for p in (
    _base(
        "generic",
        manufacturer=("generic", Source("standard", "no vendor")),
        products=((), Source("standard", "no vendor")),
        station_aet=("ENDO1", _assume("the embedded stack's sample tower; set the real one")),
        stream_url_pattern=("rtsp://{host}:{port}/stream{channel}",
                            _assume("a video gateway's RTSP URL; any URL PyAV opens works")),
        frame_sizes=(((1920, 1080), (1280, 720), (320, 240)), _assume("HD output; 320x240 is the "
                                                                      "embedded sample clip")),
        conformance_statement=("", Source("standard", "no vendor")),
        hl7_quirks=(("ORM^O01 orders carry the accession number in OBR-18 or ORC-2/OBR-2 "
                     "(placer) - map it to the worklist's AccessionNumber",),
                    _assume("common interface-engine practice")),
    ),
    _base(
        "olympus",
        manufacturer=("Olympus", Source("documented", "vendor name")),
        products=(("EVIS X1 (CV-1500)", "EVIS EXERA III (CV-190)", "ENDOALPHA"),
                  Source("documented", "product names on the vendor's site")),
        station_aet=("OLYMPUS_ENDO", _assume("no Olympus conformance statement found; the AE "
                                             "title is set at installation")),
        stream_url_pattern=("rtsp://{host}:554/ch{channel}",
                            _assume("the processor has SDI/DVI/HDMI outputs; a capture card or "
                                    "video gateway provides the stream")),
        frame_sizes=(((1920, 1080), (1280, 1024)), _assume("HD-SDI / SXGA outputs")),
        conformance_statement=("not found (ask Olympus for the EVIS X1/ENDOALPHA DICOM conformance "
                               "statement)", _assume("not found")),
        hl7_quirks=(("orders and reports usually pass through the endoscopy reporting system "
                     "(e.g. ENDOALPHA/endoBASE), not the processor",),
                    _assume("typical installation")),
    ),
    _base(
        "pentax",
        manufacturer=("PENTAX Medical (HOYA Corporation)",
                      Source("documented", "DICOM Conformance Statement IMAGINA, EPK-i5500c")),
        products=(("EPK-i5500c (IMAGINA)", "EPK-i7010"),
                  Source("documented", "DICOM Conformance Statement IMAGINA, PENTAX Medical Video "
                                       "Processor EPK-i5500c, System Version 00D5C-1.1900")),
        station_aet=("PENTAX_EPK", _assume("statement found, values not readable: check it")),
        stream_url_pattern=("rtsp://{host}:554/live{channel}",
                            _assume("processor video outputs go through a capture card or gateway")),
        frame_sizes=(((1920, 1080),), _assume("HD output of the EPK-i series")),
        conformance_statement=("DICOM Conformance Statement IMAGINA - PENTAX Medical Video Processor "
                               "EPK-i5500c, System Version 00D5C-1.1900, HOYA Corporation",
                               Source("documented", "found; only its opening pages were readable")),
    ),
    _base(
        "fujifilm",
        manufacturer=("Fujifilm", Source("documented", "vendor name")),
        products=(("ELUXEO 7000", "EP-6000"), Source("documented", "product names on the vendor's site")),
        station_aet=("FUJI_ENDO", _assume("no Fujifilm endoscopy conformance statement found "
                                          "(only Synapse PACS ones)")),
        stream_url_pattern=("rtsp://{host}:554/stream{channel}", _assume("via a capture card or gateway")),
        frame_sizes=(((1920, 1080),), _assume("HD output")),
        conformance_statement=("not found (ask Fujifilm for the processor's or the capture "
                               "system's DICOM conformance statement)", _assume("not found")),
    ),
    _base(
        "karl_storz",
        manufacturer=("KARL STORZ SE & Co. KG",
                      Source("documented", "KARL STORZ AIDA V1.3.1 DICOM Conformance Statement")),
        products=(("AIDA", "AIDA compact NEO", "AIDA HD Connect"),
                  Source("documented", "AIDA V1.3.1 (OR1-92-E 02/2017), AIDA compact NEO "
                                       "(OR1-55-E 07/2010) DICOM conformance statements")),
        station_aet=("AIDA", _assume("AIDA's AE title is configurable; the default was not readable")),
        scu_sop_classes=((*_COMMON_SCU, MPPS, STORAGE_COMMITMENT,
                          "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"),
                         Source("documented", "AIDA V1.3.1 statement: MPPS and Storage Commitment "
                                              "sections; AIDA compact statement: MOVE-SCU for "
                                              "Patient Root and Study Root Q/R")),
        character_set=("ISO_IR 100", Source("documented", "AIDA compact statement: supports ISO IR "
                                                          "100 and ISO IR 192")),
        worklist_notes=(("AIDA does not support optional matching keys and does not request "
                         "relational queries",),
                        Source("documented", "AIDA compact 3.0/NEO DICOM conformance statement, 3.2.5")),
        stream_url_pattern=("rtsp://{host}:554/{channel}", _assume("AIDA records itself; a live "
                                                                   "stream needs a gateway")),
        frame_sizes=(((1920, 1080), (3840, 2160)), _assume("IMAGE1 S FULL HD / 4K camera heads")),
        conformance_statement=("KARL STORZ AIDA V1.3.1 DICOM Conformance Statement (Product Info "
                               "OR1-92-E, 02/2017)", Source("documented", "found")),
    ),
)})

#: Profile fields kit.toml may override (``[endoscopy] overrides = { station_aet = "ENDO3" }``).
ACCEPTED_OVERRIDES: Final = tuple(f for f in _VALUE_FIELDS if f not in ("modality", "manufacturer",
                                                                       "conformance_statement"))


def profile(name: str) -> VendorProfile:
    """The profile called ``name`` (``olympus``, ``pentax``, ``fujifilm``, ``karl_storz``, ``generic``).

    Raises
    ------
    kit.errors.InvalidInputError
        No such profile (the message lists the known ones).
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in PROFILES:
        raise InvalidInputError(f"unknown endoscopy vendor {name!r}; known: {', '.join(sorted(PROFILES))}",
                                source="endoscopy.vendor")
    return PROFILES[key]


def _parse(field: str, value: Any) -> Any:
    """An override's value as the field's type (lists may be given as comma-separated text)."""
    def items(v: Any) -> list[Any]:
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        if isinstance(v, (list, tuple)):
            return list(v)
        raise ValueError(f"a list or comma-separated text, not {v!r}")

    if field == "frame_sizes":
        out = []
        for item in items(value):
            if isinstance(item, str):
                m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", item)
                if not m:
                    raise ValueError(f"sizes are WIDTHxHEIGHT, not {item!r}")
                out.append((int(m.group(1)), int(m.group(2))))
            else:
                w, h = item
                out.append((int(w), int(h)))
        return tuple(out)
    if field == "frame_rate":
        if isinstance(value, bool):
            raise ValueError(f"a number, not {value!r}")
        return float(value)
    if field in ("products", "scu_sop_classes", "scp_sop_classes", "sends_transfer_syntaxes",
                 "accepts_transfer_syntaxes", "hl7_quirks", "worklist_notes"):
        return tuple(str(x) for x in items(value))
    if not isinstance(value, str):
        raise ValueError(f"text, not {value!r}")
    return value.strip()


def apply_overrides(base: VendorProfile, overrides: Mapping[str, Any]) -> VendorProfile:
    """``base`` with ``overrides`` applied; each overridden value's source becomes ``site``.

    Parameters
    ----------
    base : VendorProfile
    overrides : mapping
        Field name -> value; lists may be comma-separated text and frame
        sizes ``"1920x1080"``, so kit.toml and ``KIT_ENDOSCOPY_OVERRIDES``
        (``"station_aet=ENDO3,still_transfer_syntax=1.2.840.10008.1.2.1"``) can set them.

    Raises
    ------
    kit.errors.InvalidInputError
        An unknown field or a value the profile refuses (the message names it).
    """
    changes: dict[str, Any] = {}
    sources = dict(base.sources)
    for field, value in overrides.items():
        if field not in ACCEPTED_OVERRIDES:
            raise _bad(field, f"not a profile field kit.toml may set; known: {', '.join(ACCEPTED_OVERRIDES)}")
        try:
            changes[field] = _parse(field, value)
        except (ValueError, TypeError) as exc:
            raise _bad(field, str(exc)) from exc
        sources[field] = Source("site", "kit.toml [endoscopy] overrides")
    return dataclasses.replace(base, **changes, sources=sources)


def check_overrides(vendor: str, overrides: Mapping[str, Any]) -> VendorProfile:
    """The configured profile: :func:`profile` then :func:`apply_overrides`; ValueError on a bad one.

    For :mod:`kit.config`, which turns the ValueError into a ConfigError naming the key.
    """
    try:
        return apply_overrides(profile(vendor), overrides)
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from exc
