"""One keyed pseudonym map for DICOM, FHIR and HL7 (pure: no sockets).

A :class:`Pseudonymiser` turns identifiers into pseudonyms with HMAC-SHA256 under
the project key, so the same original gives the same pseudonym in every system,
every file and every run with the same key, and nothing without the key can go
back. What it gives (the formats :class:`kit.dicom.deid.Deidentifier` has always
written, so earlier de-identified DICOM still joins):

========================  ==========================================  ======================
original                  pseudonym                                   method
========================  ==========================================  ======================
MRN / PatientID / PID-3   ``P`` + 15 hex                              :meth:`~Pseudonymiser.patient_id`
patient name              ``ANON^N`` + 10 hex                         :meth:`~Pseudonymiser.pseudonym`
accession number          ``A`` + 15 hex (also filler order numbers)  :meth:`~Pseudonymiser.accession_number`
instance UID (study, ..)  ``2.25.`` + 128-bit integer                 :meth:`~Pseudonymiser.uid`
other identifier          ``I`` + 15 hex (visit, placer order, ...)   :meth:`~Pseudonymiser.identifier`
FHIR resource id / urn    a UUID (``8-4-4-4-12`` hex)                 :meth:`~Pseudonymiser.resource_id`
date shift of a patient   -1095 to -31 days, from the MRN             :meth:`~Pseudonymiser.date_shift`
========================  ==========================================  ======================

The HMAC input is ``kind NUL value``, so an MRN and an accession number that
happen to be equal still get unrelated pseudonyms. The date shift is whole days,
the same for a patient wherever the MRN is met, so intervals within a patient
survive; a patient with no MRN gets the shift of the empty MRN (as DICOM does).

Every pseudonym given is recorded in a :class:`ReidentificationMap` (original ->
pseudonym per :class:`PseudonymKind`) held in memory. It is written only when
:meth:`ReidentificationMap.save` is called, never into the output folder (pass
``output_dir`` and a path inside it is refused). Two originals that would get the
same pseudonym (an HMAC truncation collision, or a map made with another key)
raise instead of merging two patients.

The key is a secret: it comes from a file or the environment
(:func:`load_key`), is registered with :mod:`kit._redact` (masked in every error
and log line) and is never printed or pickled; :attr:`Pseudonymiser.fingerprint`
(SHA-256 of a fixed label and the key, 16 hex) names it in manifests.

Hand-written: no library keys pseudonyms across DICOM, FHIR and HL7 (dicognito and
deid hash per DICOM file only).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import os
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from kit._files import atomic_path
from kit.config import Secret
from kit.errors import ConfigError, InvalidInputError

__all__ = [
    "KEY_ENV",
    "MIN_KEY_BYTES",
    "REID_SCHEMA",
    "SHIFT_DAYS",
    "Pseudonymiser",
    "PseudonymKind",
    "ReidentificationMap",
    "key_fingerprint",
    "load_key",
]

#: environment variable holding the project key when no key file is given
KEY_ENV = "KIT_DEID_KEY"
#: shortest key accepted (bytes)
MIN_KEY_BYTES = 8
#: (earliest, latest) date shift in days: every patient's dates move back by 31 to 1095 days
SHIFT_DAYS = (-1095, -31)
_SHIFT_MIN, _SHIFT_SPAN = -SHIFT_DAYS[1], SHIFT_DAYS[1] - SHIFT_DAYS[0] + 1
_MAX_ORIGINAL = 64 * 1024


class PseudonymKind(enum.StrEnum):
    """What a :class:`ReidentificationMap` row maps."""

    PATIENT_ID = "patient_id"
    PATIENT_NAME = "patient_name"
    ACCESSION_NUMBER = "accession_number"
    UID = "uid"
    #: the per-patient date shift in days (original = PatientID, pseudonym = days)
    DATE_SHIFT = "date_shift_days"
    #: other identifiers: visit and account numbers, placer order numbers, document ids, ...
    IDENTIFIER = "identifier"
    #: FHIR logical ids and ``urn:uuid`` fullUrls
    RESOURCE_ID = "resource_id"


#: columns of :attr:`ReidentificationMap.frame`
REID_SCHEMA: dict[str, Any] = {"kind": pl.String, "original": pl.String, "pseudonym": pl.String}


class ReidentificationMap:
    """Original -> pseudonym, per :class:`PseudonymKind`; the user keeps it safe.

    Parameters
    ----------
    frame : polars.DataFrame, optional
        Existing rows (``kind``, ``original``, ``pseudonym``), e.g. from :meth:`load`.

    Raises
    ------
    kit.errors.InvalidInputError
        The frame has other columns, or two rows conflict (see :meth:`add`).
    """

    def __init__(self, frame: pl.DataFrame | None = None) -> None:
        self._forward: dict[tuple[str, str], str] = {}
        self._reverse: dict[tuple[str, str], str] = {}
        if frame is not None:
            if set(frame.columns) != set(REID_SCHEMA):
                raise InvalidInputError("a re-identification map has columns kind, original, pseudonym")
            for kind, original, pseudonym in frame.select(list(REID_SCHEMA)).iter_rows():
                try:
                    self.add(PseudonymKind(kind), original, pseudonym)
                except (ValueError, TypeError) as exc:
                    raise InvalidInputError(f"invalid re-identification map row ({exc})") from exc

    def add(self, kind: PseudonymKind, original: str, pseudonym: str) -> None:
        """Record one mapping.

        Raises
        ------
        kit.errors.InvalidInputError
            Another pseudonym is recorded for ``original`` (a map made with another
            key), or another original for ``pseudonym`` (a collision: two patients
            must never merge). Neither message shows a value.
        """
        k = PseudonymKind(kind).value
        if not isinstance(original, str) or not isinstance(pseudonym, str):
            raise InvalidInputError("re-identification map values are strings")
        known = self._forward.setdefault((k, original), pseudonym)
        if known != pseudonym:
            raise InvalidInputError(f"re-identification map conflict for a {k}: two pseudonyms "
                                    "(was it made with another key?)")
        if k == PseudonymKind.DATE_SHIFT.value:  # many patients share a shift: not a pseudonym
            return
        owner = self._reverse.setdefault((k, pseudonym), original)
        if owner != original:
            del self._forward[(k, original)]
            raise InvalidInputError(f"re-identification map conflict for a {k}: two originals share "
                                    "one pseudonym (a collision; use another key)")

    def pseudonym(self, kind: PseudonymKind, original: str) -> str | None:
        """The pseudonym recorded for ``original``, if any."""
        return self._forward.get((PseudonymKind(kind).value, original))

    def original(self, kind: PseudonymKind, pseudonym: str) -> str | None:
        """Re-identify: the original value behind ``pseudonym``, if recorded (not for date shifts)."""
        return self._reverse.get((PseudonymKind(kind).value, pseudonym))

    @property
    def frame(self) -> pl.DataFrame:
        """All mappings as a frame (``kind``, ``original``, ``pseudonym``), sorted."""
        rows = [(k, o, p) for (k, o), p in self._forward.items()]
        return pl.DataFrame(rows, schema=REID_SCHEMA, orient="row").sort("kind", "original")

    def __len__(self) -> int:
        return len(self._forward)

    def __repr__(self) -> str:
        return f"ReidentificationMap({len(self)} entries)"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReidentificationMap:
        """Read a map saved by :meth:`save` (.parquet or .csv)."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".parquet":
                frame = pl.read_parquet(path)
            elif path.suffix.lower() == ".csv":
                frame = pl.read_csv(path, schema=REID_SCHEMA)
            else:
                raise InvalidInputError("a re-identification map is .parquet or .csv", source=str(path))
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InvalidInputError(f"cannot read re-identification map: {exc}", source=str(path)) from exc
        return cls(frame)

    def save(self, path: str | os.PathLike[str], *,
             output_dir: str | os.PathLike[str] | None = None) -> Path:
        """Write the map to ``path`` (.parquet or .csv), merged with what the file already holds.

        The write is atomic (temporary file + rename), so an interrupted save
        never leaves half a map.

        Parameters
        ----------
        path : path
            Where to write (.parquet or .csv).
        output_dir : path, optional
            The de-identified output folder: a ``path`` inside it is refused, so
            the map never travels with the data it re-identifies.

        Raises
        ------
        kit.errors.InvalidInputError
            Another suffix, a conflict with the file's rows, or ``path`` inside ``output_dir``.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise InvalidInputError("a re-identification map is .parquet or .csv", source=str(path))
        if output_dir is not None and is_inside(path, output_dir):
            raise InvalidInputError("the re-identification map must not be written inside the "
                                    "de-identified output folder", source=str(path))
        merged = ReidentificationMap(self.frame)
        if path.exists():
            for row in ReidentificationMap.load(path).frame.iter_rows():
                merged.add(PseudonymKind(row[0]), row[1], row[2])
        with atomic_path(path, suffix=suffix) as tmp:
            if suffix == ".parquet":
                merged.frame.write_parquet(tmp)
            else:
                merged.frame.write_csv(tmp)
        return path


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or below it (symbolic links resolved)."""
    p, f = Path(path).absolute().resolve(), Path(folder).absolute().resolve()
    return p == f or p.is_relative_to(f)


def _key_bytes(key: str | bytes | Secret) -> bytes:
    raw = key.reveal() if isinstance(key, Secret) else key
    if not isinstance(raw, str | bytes | bytearray):
        raise ConfigError("deid.key", "the de-identification key is text or bytes")
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    if len(data.strip()) < MIN_KEY_BYTES:
        raise ConfigError("deid.key", f"the de-identification key must be at least {MIN_KEY_BYTES} bytes")
    return data


def key_fingerprint(key: str | bytes | Secret) -> str:
    """A name for the key that does not reveal it: 16 hex of SHA-256 over a label and the key."""
    return hashlib.sha256(b"kit-deid-key-fingerprint\x00" + _key_bytes(key)).hexdigest()[:16]


def load_key(key_file: str | os.PathLike[str] | None = None, *, env: str = KEY_ENV) -> Secret:
    """The project key from ``key_file`` (its text, stripped) or else the environment.

    Parameters
    ----------
    key_file : path, optional
        A file holding the key as UTF-8 text.
    env : str
        The environment variable read when there is no file (default ``KIT_DEID_KEY``).

    Returns
    -------
    kit.config.Secret
        The key (masked in every error and log line from now on).

    Raises
    ------
    kit.errors.ConfigError
        No key, an unreadable file, or a key shorter than :data:`MIN_KEY_BYTES`.
    """
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("deid.key_file", f"cannot read the key file as UTF-8 text: {exc}") from exc
    else:
        text = os.environ.get(env, "").strip()
        if not text:
            raise ConfigError(env, "no de-identification key: give a key file or set " + env)
    secret = Secret(text)
    _key_bytes(secret)
    return secret


class Pseudonymiser:
    """Keyed pseudonyms and date shifts, the same in every system (see the module docstring).

    Parameters
    ----------
    key : str, bytes or kit.config.Secret
        The project key (at least 8 bytes). It is never logged, printed or pickled.
    reid_map : ReidentificationMap, optional
        Where every pseudonym given is recorded (a new, empty map by default).

    Raises
    ------
    kit.errors.ConfigError
        The key is missing or too short.
    """

    __slots__ = ("_fingerprint", "_key", "reid_map")

    def __init__(self, key: str | bytes | Secret, *, reid_map: ReidentificationMap | None = None) -> None:
        self._key = _key_bytes(key)
        self._fingerprint = key_fingerprint(self._key)
        #: the pseudonyms given so far (original -> pseudonym)
        self.reid_map = reid_map if reid_map is not None else ReidentificationMap()

    @property
    def fingerprint(self) -> str:
        """The key's fingerprint (:func:`key_fingerprint`), safe to store in a manifest."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Pseudonymiser(key=<secret {self._fingerprint}>, reid_map={self.reid_map!r})"

    def __reduce__(self) -> Any:  # never pickle the key into a notebook or a worker
        raise TypeError("a Pseudonymiser holds a secret key and cannot be pickled")

    def digest(self, kind: str, value: str) -> bytes:
        """HMAC-SHA256 of ``kind NUL value`` under the key (32 bytes); nothing is recorded."""
        if not isinstance(value, str) or len(value) > _MAX_ORIGINAL:
            raise InvalidInputError(f"a {kind} to pseudonymise is a string of at most {_MAX_ORIGINAL} "
                                    "characters")
        try:
            data = f"{kind}\x00{value}".encode()
        except UnicodeEncodeError:  # lone surrogates: hash what the text holds, losslessly
            data = f"{kind}\x00{value}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def pseudonym(self, kind: PseudonymKind, original: str) -> str:
        """The keyed pseudonym of ``original`` (recorded in :attr:`reid_map`).

        Parameters
        ----------
        kind : PseudonymKind
            ``PATIENT_ID`` -> ``P`` + 15 hex; ``PATIENT_NAME`` -> ``ANON^N`` + 10 hex;
            ``ACCESSION_NUMBER`` -> ``A`` + 15 hex; ``UID`` -> ``2.25.<128-bit int>``;
            ``IDENTIFIER`` -> ``I`` + 15 hex; ``RESOURCE_ID`` -> a UUID;
            ``DATE_SHIFT`` -> days (a negative integer, as text).
        original : str
            The original value, as the system holds it (not stripped here).

        Raises
        ------
        kit.errors.InvalidInputError
            ``original`` is not a string, or two originals collide.
        """
        kind = PseudonymKind(kind)
        digest = self.digest(kind.value, original)
        if kind is PseudonymKind.PATIENT_ID:
            value = "P" + digest.hex()[:15].upper()
        elif kind is PseudonymKind.PATIENT_NAME:
            value = "ANON^N" + digest.hex()[:10].upper()
        elif kind is PseudonymKind.ACCESSION_NUMBER:
            value = "A" + digest.hex()[:15].upper()
        elif kind is PseudonymKind.IDENTIFIER:
            value = "I" + digest.hex()[:15].upper()
        elif kind is PseudonymKind.UID:
            value = "2.25." + str(int.from_bytes(digest[:16], "big"))
        elif kind is PseudonymKind.RESOURCE_ID:
            value = str(uuid.UUID(bytes=digest[:16], version=4))
        else:
            value = str(-(_SHIFT_MIN + int.from_bytes(digest[:4], "big") % _SHIFT_SPAN))
        self.reid_map.add(kind, original, value)
        return value

    def patient_id(self, mrn: str) -> str:
        """The pseudonym of a patient identifier (MRN, DICOM PatientID, HL7 PID-3)."""
        return self.pseudonym(PseudonymKind.PATIENT_ID, mrn)

    def accession_number(self, accession: str) -> str:
        """The pseudonym of an accession number (and of a filler order number)."""
        return self.pseudonym(PseudonymKind.ACCESSION_NUMBER, accession)

    def uid(self, uid: str) -> str:
        """The pseudonym of an instance UID (study, series, SOP instance, ...): ``2.25.<int>``."""
        return self.pseudonym(PseudonymKind.UID, uid)

    def identifier(self, value: str) -> str:
        """The pseudonym of any other identifier (visit, account, placer order, document, ...)."""
        return self.pseudonym(PseudonymKind.IDENTIFIER, value)

    def resource_id(self, value: str) -> str:
        """The pseudonym of a FHIR logical id or ``urn:uuid`` value: a UUID."""
        return self.pseudonym(PseudonymKind.RESOURCE_ID, value)

    def date_shift(self, mrn: str) -> dt.timedelta:
        """The date shift of the patient with this original MRN (``""`` if there is none).

        Whole days in ``SHIFT_DAYS`` (-1095 to -31), deterministic from the key and the MRN.
        """
        return dt.timedelta(days=int(self.pseudonym(PseudonymKind.DATE_SHIFT, mrn)))
