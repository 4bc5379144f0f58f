"""De-identification to the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

The profile's tag table (Table E.1-1, every attribute with its action code D,
Z, X, U and the combinations Z/D, X/Z, X/D, X/Z/D, X/Z/U*) comes from the
``dicom-anonymizer`` package (``dicomanonymizer.dicom_anonymization_databases``,
edition 2026c, scraped from the standard, including the repeating groups
50xx curves and 60xx overlays). Of the candidates it is the one that carries the
whole table with its action codes: ``dicognito`` hard-codes a few dozen
attributes and replaces every PN/UI/date it meets; ``deid`` ships recipes
rather than the Annex E table. Its engine is not used (module-level random UID
state, top-level tags only, no pseudonyms); this module applies the table
itself, recursively into sequences, because no library does the rest:

* **Keyed pseudonyms.** PatientID, PatientName and AccessionNumber become
  HMAC-SHA256 of the original under the project key
  (:class:`kit.deid.pseudonyms.Pseudonymiser`, the one :mod:`kit.deid.fhir` and
  :mod:`kit.deid.hl7` use), so the same patient gets the same pseudonym in every
  file, every run and every system (FHIR, HL7) with the same key. Other Patient
  IDs Sequence items keep only their PatientID, pseudonymised the same way (another
  MRN of the patient still joins), and TypeOfPatientID.
  PatientName becomes ``ANON^`` + HMAC of the original name (the same in
  every file of the patient; two patients who share a name share it too).
* **UIDs** with action U (Study/Series/SOP Instance, Frame of Reference, every
  Referenced ... UID, MediaStorageSOPInstanceUID, ...) become ``2.25.<HMAC>``:
  consistent across the cohort and across runs, so the de-identified files
  still form a valid patient/study/series/instance hierarchy and references
  inside sequences still resolve.
* **Options** (:class:`DeidOptions`, all off by default, each named in the
  output's DeidentificationMethod and DeidentificationMethodCodeSequence, CID 7050):
  without options the Basic Profile's own action applies to every date and
  time (Study Date Z, Series Date X/D, Patient's Birth Date Z, ...).
  ``retain_longitudinal_modified_dates`` (DCM 113107): the attributes that
  option's column of Table E.1-1 marks C keep their dates, moved back by a
  per-patient offset (31 to 1095 days, from the HMAC of the PatientID: the shift
  FHIR and HL7 dates of the patient get too), so
  intervals within a patient survive; TM values keep their time of day.
  ``retain_patient_characteristics`` (DCM 113108): age, sex, size, weight,
  ... (the option's K attributes) are kept. Patient's Birth Date is emptied
  under every option: no column of the table keeps it.
* **Combined actions** are resolved without IOD tables to the option that
  keeps every IOD valid: Z/D -> D, X/Z -> Z, X/D -> D, X/Z/D -> D,
  X/Z/U* -> keep the sequence and replace the UIDs inside it.
  D on a sequence keeps its items and de-identifies them recursively.
  D on other values gives a keyed dummy of the VR (``ANON...``, ``0``, ...).
* All private attributes are removed. Attributes not in the table are kept,
  except what identifies: every UID that is not a well-known one (class,
  transfer syntax, coding scheme: see
  :func:`kit.dicom.deid_check.is_instance_uid`) is remapped wherever it is
  (SOPInstanceUIDOfConcatenationSource, TargetFrameOfReferenceUID, inside SR
  content, ...); every person name (PN) and SR free text (TextValue) gets a
  dummy; other free text (LT, ST, UT: a comment where a birth date was typed)
  is emptied; dates (DA, DT) are emptied, or shifted with the dates option;
  public attributes unknown to the dictionary (VR UN or not: not judgeable)
  are removed. The File Meta is rebuilt
  (MediaStorageSOPInstanceUID = the new SOP Instance UID, no
  SourceApplicationEntityTitle, kit's implementation version name).
* **Leak scan.** Every de-identified data set is scanned for every
  identifying value of its input (:mod:`kit.dicom.deid_check`); a hit raises
  :class:`~kit.dicom.deid_check.DeidLeakError` and :meth:`Deidentifier.files`
  writes nothing for that file (status ``failed``).
* PatientIdentityRemoved = YES, DeidentificationMethod,
  DeidentificationMethodCodeSequence (DCM 113100 plus one code per option)
  and LongitudinalTemporalInformationModified (MODIFIED or REMOVED) are set.
* **Burned-in annotation** cannot be removed from header processing: each file
  is flagged (BurnedInAnnotation = YES, or a modality / SOP class that usually
  carries burned-in text: US, ES, XC, SC, OT, secondary capture, VL
  endoscopic/photographic) in the result for a human to review.
* A :class:`ReidentificationMap` (original -> pseudonym per kind) is kept in
  memory; the user saves it where they choose (never into the output folder
  by default). The key is never logged or stored.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
from pydicom import dcmread
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from kit._files import atomic_path
from kit.config import Secret
from kit.deid.pseudonyms import REID_SCHEMA, Pseudonymiser, PseudonymKind, ReidentificationMap
from kit.dicom._profile_options import (
    RETAIN_LONGITUDINAL_MODIFIED_DATES,
    RETAIN_PATIENT_CHARACTERISTICS,
)
from kit.dicom.deid_check import DeidLeakError, check_deidentified, is_instance_uid
from kit.dicom.index import walk_files
from kit.errors import ConfigError, DicomFileError, InvalidInputError

__all__ = [
    "BASIC_PROFILE",
    "BASIC_PROFILE_REPEATING",
    "DEID_SCHEMA",
    "DeidLeakError",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "ProfileAction",
    "PseudonymKind",
    "REID_SCHEMA",
    "ReidentificationMap",
    "burned_in_reason",
    "profile_action",
]


class ProfileAction(enum.Enum):
    """Action codes of PS3.15 Table E.1-1 (Basic Profile column)."""

    D = "D"
    Z = "Z"
    X = "X"
    U = "U"
    Z_D = "Z/D"
    X_Z = "X/Z"
    X_D = "X/D"
    X_Z_D = "X/Z/D"
    X_Z_U = "X/Z/U*"

    @property
    def applied(self) -> str:
        """The action kit applies: ``"D"``, ``"Z"``, ``"X"``, ``"U"`` or ``"U*"``."""
        return _RESOLVED[self]


_RESOLVED = {ProfileAction.D: "D", ProfileAction.Z: "Z", ProfileAction.X: "X", ProfileAction.U: "U",
             ProfileAction.Z_D: "D", ProfileAction.X_Z: "Z", ProfileAction.X_D: "D",
             ProfileAction.X_Z_D: "D", ProfileAction.X_Z_U: "U*"}

_CATEGORIES = {"D_TAGS": ProfileAction.D, "Z_TAGS": ProfileAction.Z, "X_TAGS": ProfileAction.X,
               "U_TAGS": ProfileAction.U, "Z_D_TAGS": ProfileAction.Z_D,
               "X_Z_TAGS": ProfileAction.X_Z, "X_D_TAGS": ProfileAction.X_D,
               "X_Z_D_TAGS": ProfileAction.X_Z_D, "X_Z_U_STAR_TAGS": ProfileAction.X_Z_U}
_EDITION = "dicomfields_2026c"


def _load_profile() -> tuple[dict[int, ProfileAction],
                             tuple[tuple[int, int, int, int, ProfileAction], ...]]:
    try:
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
        table = dicom_anonymization_database_selector(_EDITION)
    except (ImportError, ValueError) as exc:
        raise ConfigError("dependencies", "dicom-anonymizer>=2.1 (PS3.15 table, edition 2026c) "
                          "is needed for de-identification") from exc
    single: dict[int, ProfileAction] = {}
    repeating: list[tuple[int, int, int, int, ProfileAction]] = []
    for name, action in _CATEGORIES.items():
        for entry in table[name]:
            if len(entry) == 2:
                single[(entry[0] << 16) | entry[1]] = action
            else:
                group, elem, gmask, emask = entry
                repeating.append((group, elem, gmask, emask, action))
    return single, tuple(repeating)


#: PS3.15 Table E.1-1: tag (as int) -> action (Basic Profile column)
BASIC_PROFILE: dict[int, ProfileAction]
#: repeating-group entries: (group, element, group mask, element mask, action)
BASIC_PROFILE_REPEATING: tuple[tuple[int, int, int, int, ProfileAction], ...]
BASIC_PROFILE, BASIC_PROFILE_REPEATING = _load_profile()


def profile_action(tag: int) -> ProfileAction | None:
    """The Basic Profile action for ``tag`` (``None`` if the table does not list it)."""
    action = BASIC_PROFILE.get(tag)
    if action is None and (tag >> 16) & 0xFF00 in (0x5000, 0x6000):
        group, elem = tag >> 16, tag & 0xFFFF
        for g, e, gm, em, a in BASIC_PROFILE_REPEATING:
            if group & gm == g & gm and elem & em == e & em:
                return a
    return action


# -- burned-in annotation -----------------------------------------------------------------

_BURNED_MODALITIES = {"US": "ultrasound", "ES": "endoscopy", "XC": "external camera",
                      "SC": "secondary capture", "OT": "other", "GM": "general microscopy",
                      "VL": "visible light"}
_BURNED_CLASS_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.6.": "ultrasound",
    "1.2.840.10008.5.1.4.1.1.3.1": "ultrasound multi-frame",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL endoscopic",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL photographic",
}


def burned_in_reason(ds: Dataset) -> str | None:
    """Why ``ds`` may carry burned-in identifying text, or ``None``.

    ``BurnedInAnnotation == "YES"``, or a modality or SOP class that typically
    has text in the pixels (ultrasound, endoscopy, external camera, secondary
    capture, ...). A flagged file needs a human look (or pixel cleaning).
    """
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in _BURNED_MODALITIES:
        return f"modality {modality} ({_BURNED_MODALITIES[modality]}) often has burned-in text"
    sop_class = str(ds.get("SOPClassUID", ""))
    for prefix, what in _BURNED_CLASS_PREFIXES.items():
        if sop_class.startswith(prefix):
            return f"SOP class {what} often has burned-in text"
    return None


# -- the de-identifier --------------------------------------------------------------------

_STRING_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UT": 10240,
               "UC": 10240, "PN": 64}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
_PATIENT_ID, _PATIENT_NAME, _ACCESSION = 0x00100020, 0x00100010, 0x00080050
#: Other Patient IDs Sequence: each item keeps only its PatientID (pseudonymised) and TypeOfPatientID
_OTHER_IDS, _OTHER_ID_KEEP = 0x00101002, frozenset({0x00100020, 0x00100022})
#: free text the table does not list: SR TextValue (Content Sequence items, any depth)
_FREE_TEXT = frozenset({0x0040A160})
#: VRs of free text: an attribute of one the table does not list is emptied (the 2026c table has no
#: Comments on the Scheduled Procedure Step nor Document Title, where a birth date was kept as typed)
_UNLISTED_TEXT = frozenset({"LT", "ST", "UT"})
_INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "PatientID")
_IMPLEMENTATION_VERSION = "KIT_DEID_1"


@dataclass(frozen=True)
class DeidOptions:
    """Options of PS3.15 Annex E applied on top of the Basic Profile (all off by default).

    Attributes
    ----------
    retain_longitudinal_modified_dates : bool
        Retain Longitudinal Temporal Information with Modified Dates Option (DCM 113107):
        the dates of the attributes this option lists are shifted by a per-patient offset
        instead of removed or emptied.
    retain_patient_characteristics : bool
        Retain Patient Characteristics Option (DCM 113108): patient's age, sex, size,
        weight, ethnic group, smoking and pregnancy status, ... are kept.
    """

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False

    @property
    def codes(self) -> list[tuple[str, str]]:
        """(code value, code meaning) of CID 7050 for the profile and each option in use."""
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.retain_longitudinal_modified_dates:
            codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
        if self.retain_patient_characteristics:
            codes.append(("113108", "Retain Patient Characteristics Option"))
        return codes

    @property
    def method(self) -> list[str]:
        """DeidentificationMethod values (LO, one per profile/option)."""
        names = {"113100": "PS3.15 Basic Profile (kit)",
                 "113107": "Retain Longitudinal Modified Dates",
                 "113108": "Retain Patient Characteristics"}
        return [names[code] for code, _ in self.codes]


class Deidentifier:
    """Apply the PS3.15 Basic Profile with keyed, cohort-consistent pseudonyms.

    Parameters
    ----------
    key : str, bytes or kit.config.Secret
        The project key (at least 8 bytes). Same key, same pseudonyms, across
        files and runs. It is a secret: it is never logged, printed or stored.
    options : DeidOptions, optional
        Profile options; default: none (the Basic Profile alone).
    shift_dates : bool, optional
        Shorthand for ``options.retain_longitudinal_modified_dates`` (shift
        dates per patient instead of applying the profile's action to them).
    reid_map : ReidentificationMap, optional
        A map to append to (e.g. loaded from an earlier run).
    """

    def __init__(self, key: str | bytes | Secret | Pseudonymiser, *, options: DeidOptions | None = None,
                 shift_dates: bool | None = None,
                 reid_map: ReidentificationMap | None = None) -> None:
        if isinstance(key, Pseudonymiser):
            if reid_map is not None and reid_map is not key.reid_map:
                raise ConfigError("deid.reid_map", "a Pseudonymiser brings its own re-identification map")
            self._pseudo = key
        else:
            self._pseudo = Pseudonymiser(key, reid_map=reid_map)
        chosen = options if options is not None else DeidOptions()
        if shift_dates is not None:
            if options is not None and options.retain_longitudinal_modified_dates != shift_dates:
                raise ConfigError("deid.shift_dates",
                                  "contradicts options.retain_longitudinal_modified_dates")
            chosen = replace(chosen, retain_longitudinal_modified_dates=shift_dates)
        self.options = chosen

    @property
    def pseudonymiser(self) -> Pseudonymiser:
        """The keyed pseudonymiser (shared with :mod:`kit.deid.fhir` and :mod:`kit.deid.hl7`)."""
        return self._pseudo

    @property
    def reid_map(self) -> ReidentificationMap:
        """Every pseudonym given so far (original -> pseudonym); save it yourself, outside the output."""
        return self._pseudo.reid_map

    @property
    def shift_dates(self) -> bool:
        """Whether dates are shifted (the Retain Longitudinal ... Modified Dates option)."""
        return self.options.retain_longitudinal_modified_dates

    def __repr__(self) -> str:
        return f"Deidentifier(key=<secret>, options={self.options!r}, reid_map={self.reid_map!r})"

    def __reduce__(self) -> Any:  # never pickle the key into a notebook or a worker
        raise TypeError("a Deidentifier holds a secret key and cannot be pickled")

    # pseudonyms ---------------------------------------------------------------------------

    def pseudonym(self, kind: PseudonymKind, original: str) -> str:
        """The keyed pseudonym of ``original`` (recorded in :attr:`reid_map`).

        The same as :meth:`kit.deid.pseudonyms.Pseudonymiser.pseudonym` with the same
        key, which :mod:`kit.deid.fhir` and :mod:`kit.deid.hl7` use, so FHIR and HL7
        identifiers still join with the de-identified DICOM.

        Parameters
        ----------
        kind : PseudonymKind
            ``PATIENT_ID`` -> ``P`` + 15 hex; ``PATIENT_NAME`` -> ``ANON^N`` + 10 hex;
            ``ACCESSION_NUMBER`` -> ``A`` + 15 hex; ``UID`` -> ``2.25.<128-bit int>``;
            ``DATE_SHIFT`` -> days.
        original : str
            The original value.
        """
        return self._pseudo.pseudonym(kind, original)

    def date_shift(self, patient_id: str) -> dt.timedelta:
        """The (negative) date offset of the patient with this original PatientID."""
        return self._pseudo.date_shift(patient_id)

    def _dummy(self, vr: str, original: Any) -> Any:
        token = self._pseudo.digest("dummy", str(original)).hex().upper()
        if vr == "PN":
            return "ANON^" + token[:10]
        if vr in _STRING_MAX:
            return ("ANON" + token)[:_STRING_MAX[vr]]
        if vr in ("DS", "IS"):
            return "0"
        if vr in _NUMBER_VRS:
            return 0
        if vr == "DA":
            return "19000101"
        if vr == "DT":
            return "19000101000000"
        if vr == "TM":
            return "000000"
        if vr == "AS":
            return "000Y"
        if vr == "UR":
            return "http://anonymized.invalid"
        if vr == "UI":
            return self.pseudonym(PseudonymKind.UID, str(original))
        if vr in _BINARY_VRS:
            return bytes(8)
        return None

    # datasets -----------------------------------------------------------------------------

    def dataset(self, ds: Dataset) -> Dataset:
        """Return a de-identified copy of ``ds`` (``ds`` itself is not changed).

        The copy is scanned for every identifying value of ``ds`` before it is returned.

        Raises
        ------
        kit.errors.DicomFileError
            The data set cannot be decoded.
        kit.dicom.deid_check.DeidLeakError
            The output still holds an identifying value of the input (nothing is returned).
        """
        out = copy.deepcopy(ds)
        patient_id = str(ds.get("PatientID", "") or "").strip()
        patient_key = patient_id or str(ds.get("PatientName", "") or "").strip()
        shift = self.date_shift(patient_key) if self.shift_dates else None
        try:
            out.walk(self._callback(shift))
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise DicomFileError(f"cannot de-identify: {exc}") from exc
        opts = self.options
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = opts.method
        out.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in opts.codes])
        out.LongitudinalTemporalInformationModified = "MODIFIED" if self.shift_dates else "REMOVED"
        if "PatientID" not in out:
            out.PatientID = self.pseudonym(PseudonymKind.PATIENT_ID, patient_key)
        if "PatientName" not in out:
            out.PatientName = ""
        out.file_meta = _file_meta(ds, out)
        check_deidentified(ds, out)
        return out

    def _callback(self, shift: dt.timedelta | None) -> Callable[[Dataset, DataElement], None]:
        keep_characteristics = self.options.retain_patient_characteristics

        def apply(dataset: Dataset, elem: DataElement) -> None:
            tag = int(elem.tag)
            if elem.tag.is_private:
                del dataset[elem.tag]
                return
            if tag == _PATIENT_ID:
                elem.value = self._map_text(elem.value, PseudonymKind.PATIENT_ID)
                return
            if tag == _PATIENT_NAME:
                elem.value = self._map_text(elem.value, PseudonymKind.PATIENT_NAME)
                return
            if tag == _ACCESSION:
                elem.value = self._map_text(elem.value, PseudonymKind.ACCESSION_NUMBER)
                return
            if tag == _OTHER_IDS and _is_sequence(elem):  # the walk then maps each item's PatientID
                elem.value = Sequence([_only(item, _OTHER_ID_KEEP) for item in elem.value or ()
                                       if str(item.get("PatientID", "") or "").strip()])
                if not elem.value:
                    del dataset[elem.tag]
                return
            if keep_characteristics and tag in RETAIN_PATIENT_CHARACTERISTICS:
                return
            vr = elem.VR
            action = profile_action(tag)
            if action is None:  # not in the table: still nothing that identifies survives
                if vr == "UI":
                    elem.value = self._map_uid(elem.value, tag)
                elif vr == "PN" or tag in _FREE_TEXT:
                    elem.value = self._map_multi(elem.value, lambda v: self._dummy(vr, v))
                elif vr == "UN" or not _in_dictionary(tag):  # unknown to pydicom: cannot be judged
                    del dataset[elem.tag]
                elif vr in _UNLISTED_TEXT:  # free text no one has judged: emptied (the IOD stays valid)
                    elem.value = None
                elif vr in ("DA", "DT"):  # a date the table does not list: as the table treats dates
                    elem.value = None if shift is None else _shift_value(elem.value, vr, shift)
                return
            if shift is not None and tag in RETAIN_LONGITUDINAL_MODIFIED_DATES:
                if vr in ("DA", "DT"):
                    elem.value = _shift_value(elem.value, vr, shift)
                    return
                if vr == "TM":  # whole-day shift: the time of day is kept
                    return
            applied = action.applied
            if applied == "X":
                del dataset[elem.tag]
            elif applied == "Z":
                elem.value = Sequence() if vr == "SQ" else None
            elif applied == "U" or applied == "U*":
                if vr == "UI":
                    elem.value = self._map_uid(elem.value, tag)
                elif vr != "SQ":  # U* on a non-sequence: empty it
                    elem.value = None
            elif vr != "SQ":  # D; a sequence keeps its items, de-identified by the walk
                elem.value = self._map_multi(elem.value, lambda v: self._dummy(vr, v))
        return apply

    def _map_text(self, value: Any, kind: PseudonymKind) -> Any:
        return self._map_multi(value, lambda v: self.pseudonym(kind, str(v).strip()))

    def _map_uid(self, value: Any, tag: int) -> Any:
        def one(v: Any) -> Any:
            uid = str(v).strip().rstrip("\x00")
            return self.pseudonym(PseudonymKind.UID, uid) if is_instance_uid(tag, uid) else v
        return self._map_multi(value, one)

    @staticmethod
    def _map_multi(value: Any, fn: Callable[[Any], Any]) -> Any:
        if value is None or value == "" or value == b"":
            return value
        if isinstance(value, (MultiValue, list)):
            return [fn(v) if v not in (None, "") else v for v in value]
        return fn(value)

    # files --------------------------------------------------------------------------------

    def files(self, in_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
              out_dir: str | os.PathLike[str], progress: bool = False) -> DeidResult:
        """De-identify DICOM files into ``out_dir``; one result row per input file.

        Output files are named from pseudonyms only
        (``<PatientID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, never the input
        name, which may carry identifiers) and written atomically. Files that
        are not DICOM are reported as ``skipped``, and so are the entries
        :func:`kit.dicom.index.walk_files` passes over (a broken symbolic link,
        a second name of a file already listed, ...); failures as ``failed``. An
        output file already there is replaced only by the same bytes (a re-run):
        a second input with the same SOP Instance UID fails, and the first stays.
        The re-identification map is not written: save :attr:`reid_map` yourself.

        Parameters
        ----------
        in_paths : path or iterable of paths
            Files and/or folders (searched recursively).
        out_dir : path
            Output folder (created if needed).
        progress : bool
            Show a progress bar on stderr (when it is a terminal).

        Returns
        -------
        DeidResult
        """
        if isinstance(in_paths, (str, os.PathLike)):
            in_paths = [in_paths]
        return self.walked(walk_files(in_paths), out_dir, progress)

    def walked(self, entries: list[tuple[str, str | None]], out_dir: str | os.PathLike[str],
               progress: bool = False) -> DeidResult:
        """:meth:`files` of the entries of :func:`kit.dicom.index.walk_files` (or a part of them,
        on a worker): one row per entry, in their order; an entry with a reason is ``skipped``."""
        out = Path(out_dir).absolute()
        out.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[Any, ...]] = []
        items: Iterable[tuple[str, str | None]] = entries
        if progress:
            import sys

            from tqdm import tqdm
            items = tqdm(entries, unit="file", desc="deid", file=sys.stderr, leave=False,
                         disable=not sys.stderr.isatty())
        for path, passed in items:
            rows.append(self._one_file(path, out) if passed is None
                        else (path, None, None, None, None, "skipped", passed))
        return DeidResult(pl.DataFrame(rows, schema=DEID_SCHEMA, orient="row"))

    def _one_file(self, path: str, out: Path) -> tuple[Any, ...]:
        try:  # force: data sets without preamble or File Meta too, as the index reads them
            ds = dcmread(path, force=True)
            if not any(ds.get(k) for k in _INSTANCE_KEYS):
                raise InvalidDicomError("no instance attributes")
        except (InvalidDicomError, EOFError) as exc:
            return (path, None, None, None, None, "skipped", f"not DICOM: {exc}".splitlines()[0])
        except Exception as exc:  # pydicom raises many types on malformed input
            return (path, None, None, None, None, "skipped", f"unreadable: {exc}".splitlines()[0])
        reason = burned_in_reason(ds)
        try:
            clean = self.dataset(ds)
            parts = [str(clean.get(k, "") or "") for k in
                     ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            if not parts[3]:
                raise DicomFileError("no SOPInstanceUID", source=path)
            target = out.joinpath(*[p or "unknown" for p in parts[:3]], parts[3] + ".dcm")
            # the output is a function of the input, the key and the options: the same bytes are a
            # re-run; other bytes, another input of this SOP Instance UID (it was overwritten), perhaps
            # written by another worker at this very moment (no_clobber: one of the two fails)
            try:
                with atomic_path(target, suffix=".dcm", no_clobber=True) as tmp:
                    clean.save_as(tmp, enforce_file_format=True)
            except FileExistsError:
                raise DicomFileError("the output folder already holds another de-identified file of "
                                     "this SOP Instance UID (another input with the same UID, or a run "
                                     "with other options); not overwritten", source=path) from None
        except Exception as exc:
            return (path, None, None, reason is not None, reason, "failed",
                    f"{type(exc).__name__}: {exc}".splitlines()[0])
        return (path, str(target), parts[0], reason is not None, reason, "deidentified", None)


def _file_meta(original: Dataset, out: Dataset) -> FileMetaDataset:
    """New File Meta: only what describes the de-identified instance (no AE titles, no
    private information, the new SOP Instance UID, kit as the implementation)."""
    old = getattr(original, "file_meta", None)
    meta = FileMetaDataset()
    sop_class = out.get("SOPClassUID") or (old.get("MediaStorageSOPClassUID") if old else None)
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    if out.get("SOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    syntax = old.get("TransferSyntaxUID") if old is not None else None
    if not syntax:  # a data set without File Meta: name the encoding pydicom read it in
        implicit, little = getattr(original, "original_encoding", (None, None))
        if implicit is not None:
            syntax = (ImplicitVRLittleEndian if implicit else
                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if syntax:
        meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


def _is_sequence(elem: DataElement) -> bool:
    """Whether ``elem`` holds a sequence."""
    return str(elem.VR) == "SQ" and isinstance(elem.value, Sequence | list)


def _only(item: Dataset, keep: frozenset[int]) -> Dataset:
    out = Dataset()
    for elem in item:
        if int(elem.tag) in keep:
            out.add(copy.deepcopy(elem))
    return out


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


@functools.lru_cache(maxsize=4096)
def _in_dictionary(tag: int) -> bool:
    """Whether pydicom's dictionary knows ``tag``, its repeating groups included (overlays 60xx,
    curves 50xx: Overlay Rows is not in the main dictionary, but is known)."""
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


def _shift_value(value: Any, vr: str, shift: dt.timedelta) -> Any:
    def one(v: Any) -> Any:
        s = str(v).strip()
        if len(s) < 8 or not s[:8].isdigit():
            return None  # unparseable: cannot be shifted, so it is emptied
        try:
            day = dt.date(int(s[:4]), int(s[4:6]), int(s[6:8])) + shift
        except (ValueError, OverflowError):
            return None
        return day.strftime("%Y%m%d") + (s[8:] if vr == "DT" else "")
    if value is None or value == "":
        return value
    if isinstance(value, (MultiValue, list)):
        return [one(v) for v in value]
    return one(value)


#: columns of :attr:`DeidResult.frame`
DEID_SCHEMA: dict[str, Any] = {
    "path_in": pl.String, "path_out": pl.String, "patient_id": pl.String,
    "burned_in_annotation": pl.Boolean, "burned_in_reason": pl.String,
    "status": pl.String, "reason": pl.String,
}


@dataclass(frozen=True)
class DeidResult:
    """What :meth:`Deidentifier.files` did, one row per input file.

    ``frame`` columns: ``path_in``, ``path_out`` (null unless written),
    ``patient_id`` (the pseudonym), ``burned_in_annotation`` (Boolean: needs
    review), ``burned_in_reason``, ``status`` (``deidentified`` | ``skipped``
    | ``failed``), ``reason`` (why not, else null).
    """

    frame: pl.DataFrame

    def __post_init__(self) -> None:
        if dict(self.frame.schema) != DEID_SCHEMA:
            raise InvalidInputError("a DeidResult frame must have the DEID_SCHEMA columns")

    def count(self, status: str) -> int:
        """Number of files with this status."""
        return int(self.frame.filter(pl.col("status") == status).height)

    @property
    def n_deidentified(self) -> int:
        """Files written."""
        return self.count("deidentified")

    @property
    def n_burned_in(self) -> int:
        """Written files flagged for burned-in annotation."""
        return int(self.frame.filter((pl.col("status") == "deidentified")
                                     & pl.col("burned_in_annotation")).height)

