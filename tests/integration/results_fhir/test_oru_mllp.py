"""A result's ORU^R01 over MLLP: to python-hl7's asyncio server (another library) and kit's listener."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from kit.errors import NakError
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.typed import AckCode
from kit.results.oru import control_id, encode_oru, oru_conclusion
from tests.integration.hl7_peer import PythonHl7Server
from tests.unit.results.samples import CONCLUSION, sample

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def hl7_server() -> Iterator[PythonHl7Server]:
    rejected = control_id(sample(result_id="res-rejected"))
    with PythonHl7Server({rejected: "AE"}) as server:
        yield server


def test_oru_to_python_hl7_server_is_acknowledged(hl7_server: PythonHl7Server) -> None:
    result = sample()
    text = encode_oru(result)
    with MLLPSender("127.0.0.1", hl7_server.port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
        ack = sender.send(text)
    assert ack.code is AckCode.AA and ack.control_id == control_id(result)
    # python-hl7 parsed what kit sent: the same segments, the measurement value and units, the escapes
    got = hl7.parse(hl7_server.received[0])
    assert str(got.segment("MSH")[10]) == control_id(result)
    first = got.segments("OBX")[0]
    assert (str(first[2]), str(first[5]), str(first[6][0][0])) == ("NM", "12.5", "mm")
    assert got.unescape(str(got.segments("OBX")[6][5])) == CONCLUSION.split("\n")[0]
    assert str(got.segment("PID")[3][0][0]) == "MRN1001" and str(got.segment("OBR")[18]) == "ACC1001"


def test_oru_answered_ae_is_a_nak_error(hl7_server: PythonHl7Server) -> None:
    with MLLPSender("127.0.0.1", hl7_server.port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
        with pytest.raises(NakError) as err:
            sender.send(encode_oru(sample(result_id="res-rejected")))
        assert err.value.ack_code == "AE"
        assert sender.send(encode_oru(sample())).code is AckCode.AA  # the connection still serves


def test_kit_listener_stores_a_resent_oru_once(tmp_path: Path) -> None:
    result = sample()
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=30.0) as listener:
        with MLLPSender("127.0.0.1", listener.port, timeout=10) as sender:
            acks = [sender.send(encode_oru(result)) for _ in range(2)]
            other = sender.send(encode_oru(sample(result_id="res-2")))
        assert [a.code for a in acks] == [AckCode.AA, AckCode.AA]
        assert acks[1].text.startswith("duplicate")
        assert other.code is AckCode.AA
        assert listener.store is not None
        assert listener.store.count() == 2 and listener.counts["duplicates"] == 1
        stored = listener.store.messages()
        assert stored["control_id"].to_list() == [control_id(result), control_id(sample(result_id="res-2"))]
        frames = listener.store.frames()
    results = frames["results"].filter(frames["results"]["control_id"] == control_id(result))
    assert results.filter(results["value_type"] == "NM")["value_numeric"].to_list() == [12.5, 0.0001, 0.93]
    assert oru_conclusion(results) == CONCLUSION
