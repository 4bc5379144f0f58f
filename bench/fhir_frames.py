"""Benchmark: FHIR Bundle -> frames. kit.fhir.frames vs fhiry vs fhir.resources (R4B) validation.

Builds one realistic Bundle (mostly Observations with several codings, components,
reference ranges and timezone datetimes, plus Patients) and writes it to a temp file
once; then, in the same run and from the same file, measures:

* kit:            ``kit.fhir.frames.to_frames(path)`` -> typed polars frames (timed until the
                  frames are returned, parse and freeing of the parsed JSON included; the
                  number of cyclic-GC collections during the call is printed too). Bundles
                  and NDJSON files take the fast path (:mod:`kit.fhir.frames_fast`); the slow
                  path (orjson dicts, what the fast path is tested equal to) is timed beside it
                  for reference; so is kit with the Python Observation row instead of its C one
                  (``kit.fhir._rowc``: what kit does where no C compiler built it), best of 3.
* fhiry:          ``fhiry.Fhiry().process_file(path)`` -> a pandas frame (untyped)
* fhir.resources: ``json.load`` + ``model_validate`` of each resource (R4B models)

kit and fhiry run :data:`ROUNDS` interleaved rounds (kit, fhiry, kit, fhiry) and the
best of each side counts, as in ``bench/dimse.py``; the other figures are one run. Each
side is called once, untimed, on a small Bundle first (first-call costs), each timing
starts after a ``gc.collect()`` and ends when the result is returned (freeing a result
happens outside the timings, for both sides).

Every library is imported before its timing starts (kit's fast path too, as fhiry is).

The fhir.resources figure is measured on the first :data:`FR_SAMPLE` resources (a rate;
validating all of them would take minutes on a busy machine).

Memory section (``--memory``): an NDJSON export generated at bench time from the sample
cohort generator (:func:`kit.examples.fhir.build_bundle`, its resources copied with
suffixed ids until there are ``--memory-size`` of them; never committed), turned into
frames by each side in its own subprocess, which reports its peak RSS
(``VmHWM``, else ``ru_maxrss``) and its peak after imports:

* kit streaming: :func:`kit.fhir.frames_stream.ndjson_to_parquet` (parquet per type,
  bounded memory), at ``--memory-size`` and at ``--fhiry-size``; its row counts are
  checked against the generator's, and on a small export its parquet equals
  ``to_frames`` (the in-memory result);
* kit in memory: ``to_frames`` of the same file (for reference);
* fhiry: ``Fhirndjson().process_file`` (pandas, one ``json_normalize`` per line: about
  100 lines/s here, so it runs on ``--fhiry-size`` and half of it, and its per-resource
  slope is printed with the extrapolation to ``--memory-size``).

Usage: ``python bench/fhir_frames.py [N_RESOURCES]`` (default 50000; speed section) or
``python bench/fhir_frames.py --memory [--memory-size N] [--fhiry-size M]`` (defaults
1,000,000 and 2,000).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import resource
import shutil
import subprocess
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
#: resources validated with fhir.resources (its rate is what is compared)
FR_SAMPLE = 5000


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


def _time(label: str, fn: Any, n: int, keep: list[Any] | None = None) -> float:
    """Resources/s of ``fn()``; its result goes to ``keep`` (freed outside the timing, by the caller)."""
    gc.collect()  # garbage left by the other side is not this side's to collect
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if keep is not None:
        keep.append(result)
    del result
    rate = n / dt
    # CPU seconds (all threads) beside the wall time: on a busy machine the wall time
    # also counts the time spent waiting for a core
    print(f"{label:<42} {dt:8.2f} s   {rate:12,.0f} resources/s   (CPU {cpu:6.2f} s)")
    return rate


def speed(n: int) -> None:
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

        collections = [0]

        def count_gc(phase: str, info: dict[str, int]) -> None:
            collections[0] += phase == "start"

        def kit_call() -> Any:
            gc.callbacks.append(count_gc)  # collections inside the call only
            try:
                return to_frames(path)
            finally:
                gc.callbacks.remove(count_gc)

        # one untimed call each on a small Bundle first: first-call costs (lazy imports, caches) on both sides
        warm = Path(tmp) / "warm.json"
        warm.write_text(json.dumps(make_bundle(500, seed=1)))
        to_frames(warm)
        Fhiry().process_file(str(warm))

        kit_rates: list[float] = []
        fhiry_rates: list[float] = []
        shapes: dict[str, Any] = {}
        for r in range(ROUNDS):  # interleaved, so a busy moment hits both sides alike
            kept: list[Any] = []
            kit_rates.append(_time(f"kit to_frames (Bundle file, typed) #{r + 1}", kit_call, n, kept))
            shapes["kit"] = {k: v.shape for k, v in kept.pop().items()}
            fhiry_rates.append(_time(f"fhiry Fhiry().process_file (pandas) #{r + 1}",
                                     lambda: Fhiry().process_file(str(path)), n, kept))
            shapes["fhiry"] = kept.pop().shape
        kit_rate, fhiry_rate = max(kit_rates), max(fhiry_rates)
        print("   ", shapes["kit"], f"(cyclic GC collections during the kit calls: {collections[0]}); "
              f"fhiry shape {shapes['fhiry']}")
        kit_nd = _time("kit to_frames (NDJSON file, typed)", lambda: to_frames(ndjson), n)
        from kit.fhir import frames_fast_types

        with mock.patch.dict(frames_fast_types.ROW, {"Observation": frames_fast_types._observation}):
            kit_py = max(_time(f"kit to_frames, Python Observation row #{r + 1}", lambda: to_frames(path), n)
                         for r in range(ROUNDS))  # what kit does where no C compiler built kit.fhir._rowc
        with mock.patch.object(kit_frames, "_fast", return_value=None):
            kit_slow = _time("kit to_frames, slow path (reference)", lambda: to_frames(path), n)

        from fhir.resources.R4B import get_fhir_model_class

        sample = Path(tmp) / "sample.json"
        data = json.loads(path.read_text())
        sample.write_text(json.dumps({**data, "entry": data["entry"][:FR_SAMPLE]}))
        n_fr = min(n, FR_SAMPLE)
        del data

        def validate_all() -> None:
            data = json.loads(sample.read_text())
            for e in data["entry"]:
                r = e["resource"]
                get_fhir_model_class(r["resourceType"]).model_validate(r)

        fr_rate = _time(f"fhir.resources R4B model_validate each ({n_fr:,})", validate_all, n_fr)
    print(f"kit best {kit_rate:,.0f}/s, fhiry best {fhiry_rate:,.0f}/s of {ROUNDS} interleaved rounds; "
          f"kit NDJSON {kit_nd:,.0f}/s; fast path {kit_rate / kit_slow:.2f}x the slow path")
    print(f"kit with the Python Observation row (no C compiler): best {kit_py:,.0f}/s, "
          f"{kit_rate / kit_py:.2f}x slower than with kit.fhir._rowc; kit/fhiry {kit_py / fhiry_rate:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    print(f"RATIO fhir frames resources/s kit/fhiry = {kit_rate / fhiry_rate:.2f}")
    print(f"RATIO fhir frames resources/s kit/fhir.resources = {kit_rate / fr_rate:.2f}")


# --------------------------------------------------------------------------- memory

def write_export(path: Path, n: int) -> dict[str, int]:
    """``n`` resources of the sample cohort as NDJSON, copied with ``-<k>`` suffixed ids; counts per type."""
    from kit.examples.fhir import build_bundle

    resources = [e["resource"] for e in build_bundle()["entry"]]
    ids = sorted({r["id"] for r in resources}, key=len, reverse=True)
    pattern = re.compile(b"(" + b"|".join(re.escape(i.encode()) for i in ids) + b")")
    # each resource split at the ids it holds (its own and its references'), rejoined per copy
    templates = [(r["resourceType"], pattern.split(json.dumps(r, separators=(",", ":")).encode()))
                 for r in resources]
    counts: dict[str, int] = {}
    done = 0
    with path.open("wb") as fh:
        k = 0
        while done < n:
            suffix = b"-%d" % k
            lines = []
            for rt, parts in templates[:n - done]:
                lines.append(b"".join(p + suffix if i % 2 else p for i, p in enumerate(parts)))
                counts[rt] = counts.get(rt, 0) + 1
            fh.write(b"\n".join(lines) + b"\n")
            done += len(lines)
            k += 1
    return counts


def peak_mb() -> float:
    """This process's peak RSS: VmHWM (Linux: reset by exec, unlike ru_maxrss, which a child
    inherits from the process that spawned it), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, path: str, out: str) -> None:
    """One measured side, in its own process: prints JSON with its peak RSS."""
    if side == "fhiry":
        os.environ["TQDM_DISABLE"] = "1"
        from fhiry.fhirndjson import Fhirndjson
    else:
        import polars as pl

        from kit.fhir.frames import to_frames
        from kit.fhir.frames_stream import ndjson_to_parquet
    base = peak_mb()
    t0 = time.perf_counter()
    if side == "fhiry":
        f = Fhirndjson()
        f.folder = str(Path(path).parent)
        rows = {"*": len(f.process_file(Path(path).name))}
    elif side == "stream":
        paths = ndjson_to_parquet(path, out)
        rows = {rt: pl.scan_parquet(p).select(pl.len()).collect().item() for rt, p in paths.items()}
    else:
        rows = {rt: f.height for rt, f in to_frames(path).items()}
    dt = time.perf_counter() - t0
    print(json.dumps({"peak_mb": peak_mb(), "base_mb": base, "seconds": dt, "rows": rows}))


def _run(side: str, path: Path, out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", side, str(path), str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    n = sum(result["rows"].values())
    print(f"{side:<8} {n:>10,} rows {result['seconds']:8.1f} s   peak RSS {result['peak_mb']:8.0f} MB"
          f"   (after imports {result['base_mb']:.0f} MB; {n / result['seconds']:,.0f} resources/s)")
    return result


def memory(n: int, m: int) -> None:
    from polars.testing import assert_frame_equal

    from kit.fhir.frames import to_frames
    from kit.fhir.frames_stream import ndjson_to_parquet

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the streaming path equals the in-memory one on a small export (many blocks, many spills)
        small = root / "small.ndjson"
        write_export(small, 3000)
        import polars as pl

        got = ndjson_to_parquet(small, root / "small-out", chunk=1 << 16, batch_rows=500)
        want = to_frames(small)
        assert list(got) == list(want)
        for rt, p in got.items():
            assert_frame_equal(pl.read_parquet(p), want[rt])
        print("kit ndjson_to_parquet == to_frames on a 3,000-resource export (64 KiB blocks): yes")

        t0 = time.perf_counter()
        big = root / "export.ndjson"
        counts = write_export(big, n)
        print(f"{n:,} resources of the sample cohort, {big.stat().st_size / 1e6:,.0f} MB NDJSON "
              f"(generated in {time.perf_counter() - t0:.1f} s)")
        kit_n = _run("stream", big, root / "out-n")
        if kit_n["rows"] != counts:
            raise SystemExit(f"row counts differ: {kit_n['rows']} != {counts}")
        shutil.rmtree(root / "out-n")
        mem_n = _run("memory", big, root / "unused")
        big.unlink()

        peaks = {}
        for size in (m // 2, m):
            part = root / f"part{size}" / "export.ndjson"
            part.parent.mkdir()
            write_export(part, size)
            print(f"-- {size:,} resources")
            peaks[size] = (_run("stream", part, root / f"out{size}"), _run("fhiry", part, root / "unused"))
        (_, fhiry_half), (kit_m, fhiry_m) = peaks[m // 2], peaks[m]
        slope = (fhiry_m["peak_mb"] - fhiry_half["peak_mb"]) / (m - m // 2) * 1024
        print(f"fhiry peak RSS slope {slope:,.1f} KB/resource ({m // 2:,} -> {m:,}); extrapolated to "
              f"{n:,}: {fhiry_m['peak_mb'] + slope * (n - m) / 1024:,.0f} MB")
        under = "under" if kit_n["peak_mb"] < 1536 else "OVER"
        print(f"kit streaming peak RSS at {n:,}: {kit_n['peak_mb']:,.0f} MB ({under} 1.5 GB); "
              f"in memory: {mem_n['peak_mb']:,.0f} MB")
    ratio = fhiry_m["peak_mb"] / kit_m["peak_mb"]
    print(f"RATIO fhir ndjson peak RSS at {m:,} resources fhiry/kit = {ratio:.2f}")
    print(f"RATIO fhir ndjson peak RSS 1.5 GB/kit at {n:,} resources = {1536 / kit_n['peak_mb']:.2f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("n", nargs="?", type=int, default=50_000, help="resources in the speed section's Bundle")
    ap.add_argument("--memory", action="store_true", help="the memory section instead of the speed section")
    ap.add_argument("--memory-size", type=int, default=1_000_000, help="resources in the NDJSON export")
    ap.add_argument("--fhiry-size", type=int, default=2_000, help="resources fhiry reads (and half of it)")
    args = ap.parse_args()
    if args.memory:
        memory(args.memory_size, args.fhiry_size)
    else:
        speed(args.n)


if __name__ == "__main__":
    main()
