"""Shared scrubbers: the sample cohort's identifiers (FHIR bundle + HL7 feed), library or not."""

from __future__ import annotations

import json

import pytest

from kit import examples
from kit.deid.text import KnownIdentifiers, TextScrubber, known_from_fhir, known_from_hl7
from kit.hl7.message import parse_message, split_messages


@pytest.fixture(scope="session")
def known() -> KnownIdentifiers:
    bundle = json.loads(examples.fhir_bundle().read_text(encoding="utf-8"))
    messages = [parse_message(m) for m in split_messages(examples.hl7_feed().read_bytes())]
    return known_from_fhir(bundle).merge(known_from_hl7(messages))


@pytest.fixture(scope="session")
def scrubber(known: KnownIdentifiers) -> TextScrubber:
    return TextScrubber(known)


@pytest.fixture(scope="session")
def known_only(known: KnownIdentifiers) -> TextScrubber:
    return TextScrubber(known, library=None)
