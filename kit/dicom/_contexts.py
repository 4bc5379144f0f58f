"""Presentation contexts a retrieving client proposes for the C-STOREs coming back (pure).

A context carries one accepted transfer syntax, picked by the acceptor from the
list proposed. With one context per SOP class listing every syntax, the PACS
accepts an uncompressed one, so it must transcode compressed instances to send
them; most PACS do for images, no PACS can for video (MPEG-2, H.264, HEVC).
When the caller names the SOP classes, each compressed syntax therefore gets a
context of its own, so the PACS can send every instance as stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    JPEG2000,
    MPEG2MPHL,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP42STEREO,
    MPEG4HP422D,
    MPEG4HP423D,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context

__all__ = ["MAX_STORAGE_CONTEXTS", "RECEIVE_TRANSFER_SYNTAXES", "storage_contexts"]

#: Transfer syntaxes the client accepts for received instances (stored as sent).
RECEIVE_TRANSFER_SYNTAXES: Final[list[UID]] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    # video (Video Endoscopic and other cine objects): MPEG-2, H.264, HEVC
    MPEG2MPML, MPEG2MPHL, MPEG4HP41, MPEG4HP41BD, MPEG4HP422D, MPEG4HP423D, MPEG4HP42STEREO,
    HEVCMP51, HEVCM10P51,
]

#: Room for storage contexts in one association (128 in all, one kept for the C-GET model).
MAX_STORAGE_CONTEXTS: Final = 127


def storage_contexts(sop_classes: Iterable[str] | None) -> list[PresentationContext]:
    """The storage contexts to propose (or support) for receiving instances.

    Parameters
    ----------
    sop_classes : iterable of str, optional
        The SOP classes expected. Without them: pynetdicom's 120 common storage
        classes, one context each with every syntax of
        :data:`RECEIVE_TRANSFER_SYNTAXES`. With them: per class, one context of
        the uncompressed syntaxes and one per compressed syntax (see the
        module docstring), at most :data:`MAX_STORAGE_CONTEXTS` in all.
    """
    syntaxes: list[Any] = list(RECEIVE_TRANSFER_SYNTAXES)
    classes = [str(uid) for uid in sop_classes] if sop_classes else []
    if not classes:
        return [build_context(str(cx.abstract_syntax), syntaxes) for cx in StoragePresentationContexts]
    native = [ts for ts in syntaxes if not ts.is_compressed]
    packed = [ts for ts in syntaxes if ts.is_compressed]
    out: list[PresentationContext] = []
    for uid in dict.fromkeys(classes):
        out.append(build_context(uid, native))
        out.extend(build_context(uid, ts) for ts in packed)
    return out[:MAX_STORAGE_CONTEXTS]
