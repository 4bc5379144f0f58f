"""The storage contexts a retrieving client proposes: named classes get one context per compressed syntax."""

from __future__ import annotations

from pydicom.uid import (
    MPEG4HP41,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VideoEndoscopicImageStorage,
)
from pynetdicom import StoragePresentationContexts

from kit.dicom._contexts import MAX_STORAGE_CONTEXTS, RECEIVE_TRANSFER_SYNTAXES, storage_contexts


def test_default_is_one_context_per_common_class_with_every_syntax() -> None:
    contexts = storage_contexts(None)
    common = [cx.abstract_syntax for cx in StoragePresentationContexts]
    assert [cx.abstract_syntax for cx in contexts] == common
    assert all(list(cx.transfer_syntax) == RECEIVE_TRANSFER_SYNTAXES for cx in contexts)


def test_named_classes_get_a_context_per_compressed_syntax() -> None:
    contexts = storage_contexts([VideoEndoscopicImageStorage, CTImageStorage, VideoEndoscopicImageStorage])
    per_class = len([ts for ts in RECEIVE_TRANSFER_SYNTAXES if ts.is_compressed]) + 1
    assert len(contexts) == 2 * per_class  # the repeated class counted once
    video = [list(cx.transfer_syntax) for cx in contexts if cx.abstract_syntax == VideoEndoscopicImageStorage]
    assert [MPEG4HP41] in video and [JPEGBaseline8Bit] in video  # alone: the acceptor cannot pick another
    assert ExplicitVRLittleEndian in video[0] and not any(ts.is_compressed for ts in video[0])


def test_never_more_contexts_than_an_association_holds() -> None:
    classes = [cx.abstract_syntax for cx in StoragePresentationContexts][:30]
    assert len(storage_contexts(classes)) == MAX_STORAGE_CONTEXTS
