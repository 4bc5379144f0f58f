"""The known-identifier layer: exact replacement in every written form, nothing else, linear time."""

from __future__ import annotations

import datetime as dt

import pytest

from kit.deid._text_known import KnownMatcher
from kit.deid.text import Address, KnownIdentifiers, PersonName, TextScrubber, known_from_fhir, known_from_hl7
from kit.errors import InvalidInputError
from kit.hl7.message import parse_message

JANE = KnownIdentifiers(
    names=(PersonName("Doe", ("Jane", "Ann")), PersonName("van der Berg", ("Piet",))),
    ids=("MRN0042", "756.1234.5678.97"),
    birth_dates=(dt.date(1970, 3, 4),),
    addresses=(Address(("Rue du Lac 12",), "Lausanne", "1005"),),
    phones=("+41 21 555 0101",),
    emails=("jane.doe@example.org",))


@pytest.fixture(scope="module")
def jane() -> TextScrubber:
    return TextScrubber(JANE, library=None)


@pytest.mark.parametrize("written", [
    "Jane Doe", "Doe, Jane", "DOE Jane", "J. Doe", "Doe J.", "Jane Ann Doe", "J. A. Doe", "doe", "Jane",
    "Piet van der Berg", "van der Berg, Piet", "Berg", "Mrs Doé"])
def test_names_in_every_order(jane: TextScrubber, written: str) -> None:
    out = jane(f"Seen: {written} today.")
    assert out.startswith("Seen: ") and "[NAME]" in out
    assert not any(w in out.lower() for w in ("jane", "doe", "berg", "piet"))
    assert out.endswith(" today.")


@pytest.mark.parametrize("written", [
    "1970-03-04", "04.03.1970", "4.3.1970", "19700304", "3/4/1970", "03/04/1970", "04/03/1970", "4/3/70",
    "4 March 1970", "March 4, 1970", "4th March 1970", "04-Mar-1970", "4. März 1970", "4 mars 1970"])
def test_birth_date_in_every_format(jane: TextScrubber, written: str) -> None:
    assert jane(f"DOB {written}.") == "DOB [DATE]."


@pytest.mark.parametrize("written", [
    "+41 21 555 0101", "+41215550101", "021 555 01 01", "0215550101", "0041 21 555 01 01", "021-555-01-01",
    "(021) 555 0101"])
def test_phone_with_and_without_separators(jane: TextScrubber, written: str) -> None:
    out = jane(f"call {written} now")
    assert out.replace("(", "") == "call [PHONE] now"  # an opening bracket may stay


def test_ids_addresses_emails(jane: TextScrubber) -> None:
    assert jane("MRN0042 / MRN 42 / mrn-0042") == "[ID] / [ID] / [ID]"
    assert jane("AHV 756.1234.5678.97 and 7561234567897") == "AHV [ID] and [ID]"
    assert jane("lives Rue du Lac 12, 1005 Lausanne") == "lives [ADDRESS], [ADDRESS]"
    assert jane("mail jane.doe@example.org!") == "mail [EMAIL]!"


def test_no_substring_or_other_number_matches(jane: TextScrubber) -> None:
    text = "Janet Doerr, Berger, MRN00421, 1970-03-05, 021 555 0102, 1005 mg, Rue du Lac 13"
    out = jane(text)
    assert "Janet Doerr" in out and "Berger" in out and "MRN00421" in out and "1970-03-05" in out
    assert "021 555 0102" in out and "1005 mg" in out


def test_spans_report_kind_and_layer_without_values(jane: TextScrubber) -> None:
    result = jane.scrub("Jane Doe, DOB 04.03.1970, +41 21 555 0101")
    assert [(s.kind, s.layer) for s in result.spans] == [
        ("NAME", "known"), ("DATE", "known"), ("PHONE", "known")]
    assert [(s.start, s.end) for s in result.spans] == [(0, 8), (14, 24), (26, 41)]
    assert "Jane" not in repr(result.spans) and result.counts == {"NAME": 1, "DATE": 1, "PHONE": 1}


def test_configurable_tokens() -> None:
    s = TextScrubber(JANE, library=None, tokens={"NAME": "XXX"})
    assert s("Jane Doe on 1970-03-04") == "XXX on [DATE]"
    with pytest.raises(InvalidInputError):
        TextScrubber(JANE, library=None, tokens={"NAME": " "})


def test_builders_read_fhir_patient_and_hl7_pid() -> None:
    patient = {"resourceType": "Patient", "identifier": [{"value": "P-77"}], "birthDate": "1970-03-04",
               "name": [{"family": "Doe", "given": ["Jane"]}], "telecom": [
                   {"system": "phone", "value": "+41 21 555 0101"}, {"system": "email", "value": "j@x.org"}],
               "address": [{"line": ["Rue du Lac 12"], "city": "Lausanne", "postalCode": "1005"}],
               "contact": [{"name": {"family": "Roe", "given": ["Rick"]}}]}
    imaging = {"resourceType": "ImagingStudy", "identifier": [
        {"value": "ACC9", "type": {"coding": [{"code": "ACSN"}]}}, {"value": "not-a-person"}]}
    k = known_from_fhir({"resourceType": "Bundle", "entry": [{"resource": patient}, {"resource": imaging}]})
    assert k.ids == ("P-77", "ACC9") and k.birth_dates == (dt.date(1970, 3, 4),)
    assert PersonName("Roe", ("Rick",)) in k.names and k.emails == ("j@x.org",)
    msg = parse_message("MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1\r"
                        "PID|1||M1^^^H^MR~SSN9^^^H^SS||Doe^Jane^Ann||19700304|F|||"
                        "Rue du Lac 12^^Lausanne^^1005"
                        "||^PRN^PH^^41^21^5550101\r"
                        "NK1|1|Roe^Rick|SPO||+41 79 555 0000\r")
    h = known_from_hl7([msg])
    assert h.ids == ("M1", "SSN9") and h.names[0] == PersonName("Doe", ("Jane", "Ann"))
    assert h.birth_dates == (dt.date(1970, 3, 4),) and h.addresses[0].city == "Lausanne"
    s = TextScrubber(h, library=None)
    assert s("Rick called from 021 555 01 01 and 079 555 00 00") == "[NAME] called from [PHONE] and [PHONE]"
    with pytest.raises(InvalidInputError):
        known_from_hl7(["MSH|"])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        known_from_fhir("Patient")


def test_sample_cohort_identifiers_all_replaced(known_only: TextScrubber, known: KnownIdentifiers) -> None:
    from kit.examples.cohort import COHORT

    for p in COHORT:
        text = (f"{p.given} {p.family} ({p.mrn}), born {p.birth_date:%d.%m.%Y}, tel {p.phone}, "
                f"{p.city}; accession {p.studies[0].accession}")
        out = known_only(text)
        for value in (p.given, p.family, p.mrn, p.city, p.studies[0].accession, p.phone):
            assert value.lower() not in out.lower(), value
        assert out == "[NAME] ([ID]), born [DATE], tel [PHONE], [ADDRESS]; accession [ID]"


def test_a_long_text_with_many_known_identifiers_is_scrubbed() -> None:
    # linear time is checked structurally (test_matcher_walk_is_bounded_by_the_longest_key), not by a
    # timed assertion: on a busy CI machine a 10x text took 37x, from noise, and failed such a check
    names = [PersonName(f"Family{i}", (f"Given{i}",)) for i in range(2000)]
    phones = tuple(f"+41 21 555 {i:04d}" for i in range(2000))
    matcher_known = KnownIdentifiers(names=tuple(names), phones=phones)
    s = TextScrubber(matcher_known, library=None, max_chars=10_000_000)
    unit = "Given7 Family7 called 021 555 0007; 1 2 3 4 5 6 7 8 9 0 Family99 Given99. "
    out = s(unit * 2000)
    assert "Family" not in out and "555" not in out and out.count("[NAME]") == 2 * 2000


def test_matcher_walk_is_bounded_by_the_longest_key() -> None:
    m = KnownMatcher([(("a",) * 5, "NAME")])
    assert m.depth == 5
    assert list(m.find("a " * 7)) == [(0, 9, "NAME")]


def test_oversized_and_non_text_refused(jane: TextScrubber) -> None:
    small = TextScrubber(JANE, library=None, max_chars=10)
    with pytest.raises(InvalidInputError):
        small("x" * 11)
    with pytest.raises(InvalidInputError):
        jane(b"Jane")  # type: ignore[arg-type]
