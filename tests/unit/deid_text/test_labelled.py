"""The labelled set: shipped, regenerable, and every known identifier in it is replaced."""

from __future__ import annotations

import json
from pathlib import Path

from kit import examples
from kit.deid.text import TextScrubber
from kit.examples import phi


def _rows() -> list[dict]:
    path = examples.samples_dir() / phi.NOTES
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shipped_set_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = phi.generate(tmp_path)
    assert written == [tmp_path / phi.NOTES]
    assert written[0].read_bytes() == (examples.samples_dir() / phi.NOTES).read_bytes()
    assert phi.NOTES in examples.load_manifest()["files"] and "phi" in examples.GENERATORS


def test_labels_point_at_text() -> None:
    rows = _rows()
    assert 200 <= len(rows) <= 1000
    for row in rows:
        for span in row["phi"] + row["keep"]:
            assert 0 <= span["start"] < span["end"] <= len(row["text"])
            assert row["text"][span["start"]:span["end"]].strip() == row["text"][span["start"]:span["end"]]
    assert sum(s["known"] for r in rows for s in r["phi"]) >= 100
    assert sum(not s["known"] for r in rows for s in r["phi"]) >= 100


def test_recall_on_known_identifiers_is_one(scrubber: TextScrubber, known_only: TextScrubber) -> None:
    rows = _rows()
    for s in (scrubber, known_only):
        result = phi.score(rows, lambda text, s=s: [(x.start, x.end) for x in s.scrub(text).spans])
        assert result["recall_known"] == 1.0
    assert result["keep"] == 1.0  # the known layer alone touches no clinical span


def test_two_layers_beat_the_library_alone(scrubber: TextScrubber) -> None:
    rows = _rows()
    library = TextScrubber(None, library="presidio")

    def detect(s: TextScrubber):  # noqa: ANN202
        return lambda text: [(x.start, x.end) for x in s.scrub(text).spans]

    kit, lib = phi.score(rows, detect(scrubber)), phi.score(rows, detect(library))
    assert kit["recall"] > lib["recall"] and kit["recall_other"] >= lib["recall_other"]
    assert kit["keep"] >= 0.95 and kit["precision"] >= 0.9


def test_score_counts_partial_cover_as_a_miss() -> None:
    row = {"text": "Jane Doe x", "phi": [{"start": 0, "end": 8, "type": "NAME", "known": True}],
           "keep": [{"start": 9, "end": 10, "label": "x"}]}
    assert phi.score([row], lambda t: [(0, 4)])["recall_known"] == 0.0
    assert phi.score([row], lambda t: [(0, 8)])["recall_known"] == 1.0
    assert phi.score([row], lambda t: [(0, 10)])["keep"] == 0.0
