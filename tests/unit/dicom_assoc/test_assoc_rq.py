"""The hand-encoded A-ASSOCIATE-RQ (kit.dicom._assoc_rq) equals pynetdicom's, byte for byte."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, build_role
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import AddressInformation

from kit.dicom._assoc_rq import encode_associate_rq
from kit.dicom._contexts import storage_contexts

_UID = st.from_regex(r"\A[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,8}\Z")
_AE = st.from_regex(r"\A[A-Z][A-Z0-9_]{0,15}\Z")


def _primitive(contexts: list[PresentationContext], user: list[object], called: str = "ORTHANC",
               calling: str = "KITSCU") -> A_ASSOCIATE:
    p = A_ASSOCIATE()
    p.application_context_name = UID("1.2.840.10008.3.1.1.1")
    p.calling_ae_title, p.called_ae_title = calling, called
    p.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    p.called_presentation_address = AddressInformation("127.0.0.1", 2)
    for i, cx in enumerate(contexts):
        cx.context_id = 2 * i + 1
    p.presentation_context_definition_list = contexts
    p.user_information = user  # type: ignore[assignment]
    return p


def _mandatory(maximum: int = 4 * 1024 * 1024) -> list[object]:
    m = MaximumLengthNotification()
    m.maximum_length_received = maximum
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    v = ImplementationVersionNameNotification()
    v.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [m, ic, v]


def test_the_c_get_request_equals_pynetdicoms() -> None:
    """The kit's C-GET proposal: 127 storage contexts of ~21 syntaxes with SCP roles."""
    storage = [copy.deepcopy(cx) for cx in storage_contexts(None)][:127]
    contexts = [build_context("1.2.840.10008.5.1.4.1.2.2.3"), *storage]
    roles = [build_role(str(cx.abstract_syntax), scp_role=True) for cx in storage]
    p = _primitive(contexts, [*_mandatory(), *roles])
    assert encode_associate_rq(p) == A_ASSOCIATE_RQ(p).encode()


def test_other_user_information_items_are_pynetdicoms() -> None:
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked, window.maximum_number_operations_performed = 2, 3
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid, ext.service_class_application_information = "1.2.840.10008.5.1.4.1.1.2", b"\x01"
    ident = UserIdentityNegotiation()
    ident.user_identity_type, ident.primary_field = 1, b"user"
    role = build_role("1.2.840.10008.5.1.4.1.1.2", scu_role=True)
    p = _primitive([build_context("1.2.840.10008.1.1")], [*_mandatory(0), window, ext, ident, role])
    assert encode_associate_rq(p) == A_ASSOCIATE_RQ(p).encode()


def test_a_context_too_large_for_its_length_field_is_left_to_pynetdicom() -> None:
    cx = build_context("1.2.840.10008.5.1.4.1.1.2", [f"1.2.{i}.{'1' * 50}" for i in range(1100)])
    with pytest.raises(ValueError):
        encode_associate_rq(_primitive([cx], _mandatory()))


@settings(max_examples=40, deadline=None)
@given(called=_AE, calling=_AE, maximum=st.integers(0, 2**32 - 1),
       contexts=st.lists(st.tuples(_UID, st.lists(_UID, min_size=1, max_size=4)), min_size=1,
                         max_size=6),
       roles=st.lists(st.tuples(_UID, st.sampled_from([None, True, False]),
                                st.sampled_from([None, True, False])), max_size=4))
def test_generated_requests_equal_pynetdicoms(called: str, calling: str, maximum: int,
                                              contexts: list[tuple[str, list[str]]],
                                              roles: list[tuple[str, bool | None, bool | None]]) -> None:
    role_items = []
    for uid, scu, scp in roles:
        if not scu and not scp:
            continue  # pynetdicom refuses a role selection with neither role
        role = build_role(uid, scu_role=bool(scu), scp_role=bool(scp))
        role.scu_role, role.scp_role = scu, scp
        role_items.append(role)
    p = _primitive([build_context(a, ts) for a, ts in contexts], [*_mandatory(maximum), *role_items],
                   called, calling)
    assert encode_associate_rq(p) == A_ASSOCIATE_RQ(p).encode()


def test_the_encoder_is_pure() -> None:
    """No socket or network import reachable from kit.dicom._assoc_rq (the purity rule)."""
    from tests.unit.core.test_purity import FORBIDDEN, KIT, _closure

    reached = _closure(KIT / "dicom" / "_assoc_rq.py")
    bad = sorted(n for n in reached if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, bad
