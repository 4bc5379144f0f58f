"""Benchmark: free-text PHI scrubbing on the labelled synthetic set (data/samples/phi).

kit's two-layer scrubber (:class:`kit.deid.text.TextScrubber`: the cohort's identifiers
from the sample FHIR bundle and HL7 feed, replaced exactly, then Presidio's offline
recognizers plus kit's) against the library alone (Presidio's offline pattern
recognizers, what ``pip install presidio-analyzer`` gives without a spaCy model), in one
run on the same sentences. Reported per system: recall on known identifiers, on the other
PHI and overall (a PHI span counts when every character is replaced), recall per type,
character precision, the share of clinical spans kept whole and of non-PHI characters kept,
and throughput.

    python bench/phi.py

Ends with ``RATIO phi <what> kit/library = <x>`` lines (higher is better for the kit).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from kit import examples
from kit.deid.text import TextScrubber, known_from_fhir, known_from_hl7
from kit.examples import phi
from kit.hl7.message import parse_message, split_messages


def _rows() -> list[dict[str, Any]]:
    path = examples.samples_dir() / phi.NOTES
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _known() -> Any:
    bundle = json.loads(examples.fhir_bundle().read_text(encoding="utf-8"))
    messages = [parse_message(m) for m in split_messages(examples.hl7_feed().read_bytes())]
    return known_from_fhir(bundle).merge(known_from_hl7(messages))


def _detector(s: TextScrubber) -> Callable[[str], list[tuple[int, int]]]:
    return lambda text: [(sp.start, sp.end) for sp in s.scrub(text).spans]


def main() -> int:
    rows = _rows()
    known = _known()
    systems = {
        "kit": TextScrubber(known, library="kit"),
        "library": TextScrubber(None, library="presidio"),
        "kit-known-only": TextScrubber(known, library=None),
    }
    chars = sum(len(r["text"]) for r in rows)
    print(f"labelled set: {len(rows)} sentences, {chars} characters, known identifiers: {len(known)}")
    results: dict[str, dict[str, Any]] = {}
    for name, scrubber in systems.items():
        t0 = time.perf_counter()
        results[name] = phi.score(rows, _detector(scrubber))
        results[name]["chars_per_s"] = chars / (time.perf_counter() - t0)
    first = results["kit"]
    print(f"PHI spans: {first['spans_known']} known, {first['spans_other']} other; "
          f"clinical spans to keep: {first['keep_spans']}")
    head = f"{'':24s}" + "".join(f"{n:>16s}" for n in results)
    print(head)
    for key in ("recall_known", "recall_other", "recall", "precision", "keep", "non_phi_kept", "chars_per_s"):
        fmt = "{:>16,.0f}" if key == "chars_per_s" else "{:>16.3f}"
        print(f"{key:24s}" + "".join(fmt.format(r[key]) for r in results.values()))
    for typ in first["recall_by_type"]:
        print(f"{'recall ' + typ:24s}" + "".join(f"{r['recall_by_type'].get(typ, 0.0):>16.3f}"
                                                 for r in results.values()))
    kit, lib = results["kit"], results["library"]
    if kit["recall_known"] != 1.0:
        print("FAIL: recall on known identifiers is not 1.0", file=sys.stderr)
    for key, label in (("recall", "recall"), ("recall_other", "recall other"), ("precision", "precision"),
                       ("non_phi_kept", "non-PHI kept")):
        ratio = kit[key] / lib[key] if lib[key] else float("inf")
        print(f"RATIO phi {label} kit/library = {ratio:.2f}")
    return 0 if kit["recall_known"] == 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
