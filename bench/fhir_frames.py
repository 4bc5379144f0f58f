"""Benchmark: FHIR Bundle -> frames. kit.fhir.frames vs fhiry vs fhir.resources (R4B) validation.

Builds one realistic Bundle (mostly Observations with several codings, components,
reference ranges and timezone datetimes, plus Patients) and writes it to a temp file
once; then, in the same run and from the same file, measures:

* kit:            ``kit.fhir.frames.to_frames(path)`` -> typed polars frames (timed until the
                  frames are returned, parse and freeing of the parsed JSON included; the
                  number of cyclic-GC collections during the call is printed too). Bundles
                  and NDJSON files take the fast path (:mod:`kit.fhir.frames_fast`); the slow
                  path (orjson dicts, what the fast path is tested equal to) is timed beside it
                  for reference.
* fhiry:          ``fhiry.Fhiry().process_file(path)`` -> a pandas frame (untyped)
* fhir.resources: ``json.load`` + ``model_validate`` of each resource (R4B models)

kit and fhiry run :data:`ROUNDS` interleaved rounds (kit, fhiry, kit, fhiry) and the
best of each side counts, as in ``bench/dimse.py``; the other figures are one run.

Every library is imported before its timing starts (kit's fast path too, as fhiry is).

Usage: ``python bench/fhir_frames.py [N_RESOURCES]`` (default 50000).
"""

from __future__ import annotations

import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBS = [  # (loinc, display, snomed, unit, low, high, mean)
    ("8867-4", "Heart rate", "364075005", "/min", 60, 100, 75),
    ("8310-5", "Body temperature", "386725007", "Cel", 36.1, 37.2, 36.8),
    ("2339-0", "Glucose [Mass/volume] in Blood", "434912009", "mg/dL", 70, 100, 95),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "271026005", "g/dL", 12, 17.5, 14),
    ("29463-7", "Body weight", "27113001", "kg", None, None, 75),
]


#: interleaved rounds of kit and fhiry; each side's best counts (the machine may be shared)
ROUNDS = 3


def make_bundle(n: int, seed: int = 7) -> dict[str, Any]:
    """A collection Bundle with ``n`` resources: ~4% Patients, the rest Observations."""
    rnd = random.Random(seed)
    n_pat = max(1, n // 25)
    entries: list[dict[str, Any]] = []
    for i in range(n_pat):
        pid = f"pat{i:06d}"
        entries.append({"fullUrl": f"http://example.org/fhir/Patient/{pid}", "resource": {
            "resourceType": "Patient", "id": pid,
            "meta": {"versionId": "1", "lastUpdated": "2024-03-01T12:00:00.000+01:00"},
            "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                           "valueCode": rnd.choice("MF")}],
            "identifier": [
                {"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                      "code": "MR"}]},
                 "system": "urn:oid:1.2.36.146.595.217.0.1", "value": f"MRN{i:07d}"},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"999-{i % 100:02d}-{i:04d}"}],
            "active": True,
            "name": [{"use": "official", "family": rnd.choice(["Smith", "Garcia", "Müller", "Tanaka"]),
                      "given": [rnd.choice(["Ann", "Bo", "Chen", "Dee"]), "Q"]}],
            "telecom": [{"system": "phone", "value": f"+1-555-{i:07d}", "use": "home"}],
            "gender": rnd.choice(["male", "female"]),
            "birthDate": f"{rnd.randint(1930, 2010)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
            "address": [{"line": [f"{i} Main St"], "city": "Springfield", "state": "IL",
                         "postalCode": "62701", "country": "US"}]}})
    for j in range(n - n_pat):
        pid = f"pat{rnd.randrange(n_pat):06d}"
        if j % 10 == 0:  # blood pressure panel with components
            obs: dict[str, Any] = {
                "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"},
                                    {"system": SNOMED, "code": "75367002", "display": "Blood pressure"}],
                         "text": "Blood pressure"},
                "component": [
                    {"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                     "valueQuantity": {"value": rnd.randint(100, 160), "unit": "mmHg",
                                       "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                    {"code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
                     "valueQuantity": {"value": rnd.randint(60, 100), "unit": "mmHg",
                                       "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}
        else:
            loinc, display, snomed, unit, low, high, mean = rnd.choice(OBS)
            value = round(rnd.gauss(mean, mean * 0.1), 1)
            obs = {
                "code": {"coding": [{"system": LOINC, "code": loinc, "display": display},
                                    {"system": SNOMED, "code": snomed}], "text": display},
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                  "code": unit}}
            if low is not None:
                obs["referenceRange"] = [{"low": {"value": low, "unit": unit},
                                          "high": {"value": high, "unit": unit}}]
                flag = "H" if value > high else ("L" if value < low else "N")
                obs["interpretation"] = [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": flag}]}]
        tz = rnd.choice(["Z", "+01:00", "-05:00"])
        entries.append({"fullUrl": f"http://example.org/fhir/Observation/obs{j:07d}", "resource": {
            "resourceType": "Observation", "id": f"obs{j:07d}",
            "meta": {"versionId": "1", "lastUpdated": "2024-03-01T12:00:00.000Z"},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs" if j % 2 else "laboratory"}]}],
            **obs,
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/enc{j // 20:06d}"},
            "effectiveDateTime": f"2023-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}T"
                                 f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00{tz}",
            "issued": "2023-12-31T23:59:59.123+00:00"}})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _time(label: str, fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    rate = n / dt
    print(f"{label:<42} {dt:8.2f} s   {rate:12,.0f} resources/s")
    return rate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    bundle = make_bundle(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.json"
        path.write_text(json.dumps(bundle))
        ndjson = Path(tmp) / "bundle.ndjson"
        ndjson.write_text("\n".join(json.dumps(e["resource"]) for e in bundle["entry"]))
        del bundle
        print(f"{n:,} resources, {path.stat().st_size / 1e6:.1f} MB Bundle")

        from fhiry import Fhiry

        import kit.fhir.frames_fast  # noqa: F401  # imported outside the timing, like fhiry
        from kit.fhir import frames as kit_frames
        from kit.fhir.frames import to_frames

        frames: dict[str, Any] = {}
        out: list[Any] = []
        collections = [0]

        def count_gc(phase: str, info: dict[str, int]) -> None:
            collections[0] += phase == "start"

        def kit_run() -> None:
            frames.update(to_frames(path))

        kit_rates: list[float] = []
        fhiry_rates: list[float] = []
        for r in range(ROUNDS):  # interleaved, so a busy moment hits both sides alike
            gc.callbacks.append(count_gc)
            try:
                kit_rates.append(_time(f"kit to_frames (Bundle file, typed) #{r + 1}", kit_run, n))
            finally:
                gc.callbacks.remove(count_gc)
            fhiry_rates.append(_time(f"fhiry Fhiry().process_file (pandas) #{r + 1}", lambda: out.append(
                Fhiry().process_file(str(path))), n))
        kit_rate, fhiry_rate = max(kit_rates), max(fhiry_rates)
        print("   ", {k: v.shape for k, v in frames.items()},
              f"(cyclic GC collections during the kit calls: {collections[0]}); fhiry shape {out[0].shape}")
        kit_nd = _time("kit to_frames (NDJSON file, typed)", lambda: to_frames(ndjson), n)
        with mock.patch.object(kit_frames, "_fast", return_value=None):
            kit_slow = _time("kit to_frames, slow path (reference)", lambda: to_frames(path), n)

        from fhir.resources.R4B import get_fhir_model_class

        def validate_all() -> None:
            data = json.loads(path.read_text())
            for e in data["entry"]:
                r = e["resource"]
                get_fhir_model_class(r["resourceType"]).model_validate(r)

        fr_rate = _time("fhir.resources R4B model_validate each", validate_all, n)
    print(f"kit best {kit_rate:,.0f}/s, fhiry best {fhiry_rate:,.0f}/s of {ROUNDS} interleaved rounds; "
          f"kit NDJSON {kit_nd:,.0f}/s; fast path {kit_rate / kit_slow:.2f}x the slow path")
    print(f"RATIO fhir frames resources/s kit/fhiry = {kit_rate / fhiry_rate:.2f}")
    print(f"RATIO fhir frames resources/s kit/fhir.resources = {kit_rate / fr_rate:.2f}")


if __name__ == "__main__":
    main()
