"""A labelled synthetic set of clinical-note sentences with PHI (``<out>/phi/notes.jsonl``).

Deterministic (a fixed seed, the cohort of :mod:`kit.examples.cohort`, and the fixed lists
below): regenerating gives byte-identical output. Each line is one JSON object::

    {"id": "n0001", "mrn": "MRN1001" or null, "text": "...",
     "phi":  [{"start": 0, "end": 12, "type": "NAME", "known": true}, ...],
     "keep": [{"start": 30, "end": 34, "label": "measurement"}, ...]}

``phi`` spans are the identifiers a scrubber must remove: ``known`` ones come from the
cohort's patients (names in every written form, birth dates in several formats, MRNs,
accession numbers, phone numbers, street and city), the others are invented people,
dates of service, phone numbers, e-mails and record numbers the cohort does not hold.
``keep`` spans are clinical text that must survive (drugs and doses, anatomy, staging and
scores, measurements, sequences such as ``T2`` or ``C3-C4``). All of it is invented.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from pathlib import Path
from typing import Any

import orjson

from kit.examples.cohort import COHORT, Patient

__all__ = ["NOTES", "SEED", "generate", "notes", "score"]

#: Where the set is written, relative to the samples root.
NOTES = "phi/notes.jsonl"
#: Seed of the generator.
SEED = 20260313

_CITY_CODE = {"Lausanne": "1005", "Zurich": "8001", "Lugano": "6900", "Bern": "3011", "Geneva": "1201",
              "Basel": "4051"}
# Invented people who are not in the cohort (staff, relatives, other patients).
_OTHERS = [("Weber", "Anna"), ("Schmid", "Lukas"), ("Fontana", "Marco"), ("Brunner", "Sophie"),
           ("Kunz", "Thomas"), ("Girard", "Claire"), ("Bianchi", "Luca"), ("Steiner", "Nina"),
           ("Favre", "Julien"), ("Gerber", "Laura"), ("Ammann", "Jonas"), ("Rochat", "Elise")]
_DOMAINS = ["spital-nord.ch", "example-clinic.org", "mail.example.com", "hopital-sud.ch"]
_PHONES = ["+41 31 632 21 11", "044 255 11 11", "+49 30 4505 0", "+1 212 555 0187", "021 314 11 11",
           "+33 1 42 16 00 00", "061 328 61 11", "+41 58 399 71 11"]
_KEEP = {
    "drug": ["metformin 500 mg", "apixaban 5 mg b.i.d.", "atorvastatin 40 mg", "pantoprazole 40 mg i.v.",
             "amoxicillin/clavulanate 1 g", "ibuprofen 400 mg p.o.", "levothyroxine 75 mcg"],
    "anatomy": ["C3-C4", "L4/L5", "segment S6 of the liver", "right upper lobe", "sigmoid colon",
                "left main coronary artery", "T12 vertebral body"],
    "finding": ["T2 hyperintense lesion", "pT2 N0 M0", "BI-RADS 3", "Lung-RADS 4A", "ECOG 1", "GCS 15",
                "Grade II", "NYHA class II", "Bosniak IIF cyst", "TI-RADS 3"],
    "measurement": ["5 mm", "18 x 12 mm", "BP 120/80 mmHg", "HbA1c 6.5%", "eGFR 58 mL/min/1.73m2",
                    "SUVmax 4.2", "Hb 12.1 g/dL", "CRP 2.1 mg/L", "EF 55%", "3 cm"],
    "timing": ["in 3 months", "after 2 cycles", "at 6 weeks", "day 5 of 7"],
}
# Sentence templates: {k*} known PHI of the sentence's patient, {u*} other PHI, {keep:*} clinical text.
_TEMPLATES = [
    "{kname} (DOB {kdob}) presented with a {keep:finding} at {keep:anatomy}.",
    "Patient {kname}, {kmrn}, seen for follow-up; {keep:measurement} unchanged.",
    "Dictated by Dr. {uname} on {udate}: {keep:finding}, no change since prior.",
    "Spoke with {kname} on {kphone}; advised {keep:drug} and review {keep:timing}.",
    "{kname} lives at {kstreet}, {kcity}; daughter {ugiven} reachable at {uphone}.",
    "Accession {kacc}: {keep:measurement} nodule in the {keep:anatomy}.",
    "Referred by Dr. {uname} ({uemail}) regarding {keep:finding}.",
    "Signed by {uname}, {udate}.",
    "Birth date {kdob}; MRN {kmrnnum}; contact {kphone}.",
    "Report for {kname}: {keep:measurement} at {keep:anatomy}, start {keep:drug}.",
    "Case no. {uid} discussed at tumour board on {udate}; {keep:finding}.",
    "Her husband {ugiven} called from {uphone} about the appointment.",
    "Compared with the study of {udate}, the {keep:finding} at {keep:anatomy} is stable.",
    "{kname} was informed of the result ({keep:measurement}).",
    "Please send the images to {uemail} (Dr. {uname}).",
    "Lab ID {uid}: {keep:measurement}, {keep:measurement}.",
    "No PHI here: {keep:finding}, {keep:measurement}, {keep:drug} {keep:timing}.",
    "Transferred from {kcity} hospital; {keep:finding} at {keep:anatomy}.",
    "Mr/Ms {kfamily} tolerated {keep:drug} well; next visit {udate}.",
    "Seen with {uname} (other patient, bed 4) on {udate}.",
    "{uname} brought the patient to the emergency department.",
    "Results were forwarded to {uname} at the practice; {keep:finding}.",
]
_SLOT = re.compile(r"\{([a-z]+)(?::([a-z]+))?\}")


_MONTH = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # not strftime's %B, which follows the locale


def _dob_forms(d: dt.date) -> list[str]:
    return [d.isoformat(), d.strftime("%d.%m.%Y"), d.strftime("%Y%m%d"), f"{d.month}/{d.day}/{d.year}",
            f"{d.day} {_MONTH[d.month - 1]} {d.year}", f"{_MONTH[d.month - 1]} {d.day}, {d.year}",
            f"{d.day}.{d.month}.{d.year}", d.strftime("%d/%m/%Y")]


def _name_forms(p: Patient) -> list[str]:
    return [f"{p.given} {p.family}", f"{p.family}, {p.given}", f"{p.given[0]}. {p.family}",
            f"{p.family.upper()} {p.given}", f"{p.family} {p.given[0]}."]


def _phone_forms(phone: str) -> list[str]:
    digits = phone.replace("+", "").replace(" ", "")
    national = "0" + digits[2:]
    return [phone, national, f"{national[:3]} {national[3:6]} {national[6:8]} {national[8:]}",
            "+" + digits, f"0041 {digits[2:4]} {digits[4:7]} {digits[7:]}"]


def _udate(rng: random.Random) -> str:
    d = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(700))
    month = _MONTH[d.month - 1]
    return rng.choice([d.strftime("%d.%m.%Y"), d.isoformat(), f"{month} {d.day}, {d.year}",
                       f"{d.day} {month[:3]} {d.year}", d.strftime("%d/%m/%Y")])


def _fill(kind: str, arg: str | None, p: Patient | None,
          rng: random.Random) -> tuple[str, dict[str, Any] | None]:
    """The text for one slot and its label (``{"phi": type, "known": bool}`` or ``{"keep": label}``)."""
    if kind == "keep":
        assert arg is not None
        return rng.choice(_KEEP[arg]), {"keep": arg}
    if kind.startswith("k"):
        assert p is not None
        study = rng.choice(p.studies)
        value, typ = {
            "kname": (rng.choice(_name_forms(p)), "NAME"), "kfamily": (p.family, "NAME"),
            "kdob": (rng.choice(_dob_forms(p.birth_date)), "DATE"), "kmrn": (p.mrn, "ID"),
            "kmrnnum": (p.mrn[3:], "ID"), "kphone": (rng.choice(_phone_forms(p.phone)), "PHONE"),
            "kstreet": (f"Rue {int(p.mrn[-1])}", "ADDRESS"),
            "kcity": (rng.choice([p.city, f"{_CITY_CODE.get(p.city, '1000')} {p.city}"]), "ADDRESS"),
            "kacc": (study.accession, "ID"),
        }[kind]
        return value, {"phi": typ, "known": True}
    family, given = rng.choice(_OTHERS)
    value, typ = {
        "uname": (rng.choice([f"{given} {family}", f"{given[0]}. {family}", family]), "NAME"),
        "ugiven": (given, "NAME"), "udate": (_udate(rng), "DATE"), "uphone": (rng.choice(_PHONES), "PHONE"),
        "uemail": (f"{given.lower()}.{family.lower()}@{rng.choice(_DOMAINS)}", "EMAIL"),
        "uid": (rng.choice([f"{rng.randrange(10**7, 10**8)}", f"KH-{rng.randrange(10**7, 10**8)}",
                            f"LAB{rng.randrange(10**5, 10**6)}"]), "ID"),
    }[kind]
    return value, {"phi": typ, "known": False}


def _render(template: str, p: Patient | None, rng: random.Random) -> dict[str, Any]:
    text: list[str] = []
    phi: list[dict[str, Any]] = []
    keep: list[dict[str, Any]] = []
    pos = last = 0
    for m in _SLOT.finditer(template):
        literal = template[last:m.start()]
        text.append(literal)
        pos += len(literal)
        value, label = _fill(m.group(1), m.group(2), p, rng)
        if label is not None and "phi" in label:
            phi.append({"start": pos, "end": pos + len(value), "type": label["phi"], "known": label["known"]})
        elif label is not None:
            keep.append({"start": pos, "end": pos + len(value), "label": label["keep"]})
        text.append(value)
        pos += len(value)
        last = m.end()
    text.append(template[last:])
    return {"text": "".join(text), "phi": phi, "keep": keep}


def notes(per_patient: int = 40) -> list[dict[str, Any]]:
    """The labelled sentences: ``per_patient`` per cohort patient, then sentences about nobody known."""
    rng = random.Random(SEED)
    out: list[dict[str, Any]] = []
    known = [t for t in _TEMPLATES if "{k" in t]
    other = [t for t in _TEMPLATES if "{k" not in t]
    for p in COHORT:
        for i in range(per_patient):
            template = known[i % len(known)] if i % 3 else rng.choice(other)
            out.append({"mrn": p.mrn if "{k" in template else None, **_render(template, p, rng)})
    for i in range(2 * per_patient):
        out.append({"mrn": None, **_render(other[i % len(other)], None, rng)})
    return [{"id": f"n{i + 1:04d}", **row} for i, row in enumerate(out)]


def generate(out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/phi/notes.jsonl``; returns the file written."""
    path = Path(out_dir) / NOTES
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in notes()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return [path]


def _covered(spans: list[tuple[int, int]], n: int) -> list[bool]:
    mask = [False] * n
    for a, b in spans:
        for i in range(max(a, 0), min(b, n)):
            mask[i] = True
    return mask


def score(rows: list[dict[str, Any]], detect: Any) -> dict[str, Any]:
    """Recall, precision and kept clinical text of a detector on labelled rows.

    Parameters
    ----------
    rows : list of dict
        Rows as in ``notes.jsonl``.
    detect : callable
        ``detect(text) -> iterable of (start, end)`` spans it would replace.

    Returns
    -------
    dict
        ``recall_known`` / ``recall_other`` / ``recall`` (PHI spans every character of which
        is replaced), ``recall_by_type`` (type -> share, all spans), ``precision`` (replaced
        characters that are PHI), ``keep`` (clinical spans left whole), ``non_phi_kept``
        (characters outside PHI spans left as they were), and the counts.
    """
    hit = {True: 0, False: 0}
    total = {True: 0, False: 0}
    by_type: dict[str, list[int]] = {}
    replaced = replaced_phi = non_phi = non_phi_kept = keep_total = keep_whole = 0
    for row in rows:
        text = row["text"]
        mask = _covered([(a, b) for a, b in detect(text)], len(text))
        gold = _covered([(s["start"], s["end"]) for s in row["phi"]], len(text))
        for s in row["phi"]:
            whole = all(mask[s["start"]:s["end"]])
            total[s["known"]] += 1
            hit[s["known"]] += whole
            counts = by_type.setdefault(s["type"], [0, 0])
            counts[0] += whole
            counts[1] += 1
        for s in row["keep"]:
            keep_total += 1
            keep_whole += not any(mask[s["start"]:s["end"]])
        for m, g in zip(mask, gold, strict=True):
            replaced += m
            replaced_phi += m and g
            if not g:
                non_phi += 1
                non_phi_kept += not m
    return {
        "recall_known": hit[True] / total[True] if total[True] else 1.0,
        "recall_other": hit[False] / total[False] if total[False] else 1.0,
        "recall": (hit[True] + hit[False]) / max(1, total[True] + total[False]),
        "recall_by_type": {t: c[0] / c[1] for t, c in sorted(by_type.items())},
        "precision": replaced_phi / replaced if replaced else 1.0,
        "keep": keep_whole / keep_total if keep_total else 1.0,
        "non_phi_kept": non_phi_kept / non_phi if non_phi else 1.0,
        "spans_known": total[True], "spans_other": total[False], "keep_spans": keep_total,
    }
