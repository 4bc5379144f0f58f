"""Research cohorts: pull a cohort's studies out of a PACS politely and resumably.

:func:`pull` (``kit cohort pull``) resolves accession numbers, study UIDs or
MRNs and retrieves every study once, under caps on concurrent associations
and images per second, with a durable journal so a killed job resumes where
it stopped. See :mod:`kit.cohort.pull`; the pure rules are in
:mod:`kit.cohort.plan`, the limits in :mod:`kit.cohort.limiter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kit.cohort.pull import CohortPull, pull

__all__ = ["CohortPull", "pull"]


def __getattr__(name: str) -> Any:
    # lazily: importing the pure kit.cohort.plan must not load the DICOM network stack
    if name in __all__:
        import importlib

        module = importlib.import_module("kit.cohort.pull")
        # the function, not the submodule of the same name that the import just bound here
        globals().update(CohortPull=module.CohortPull, pull=module.pull)
        return globals()[name]
    raise AttributeError(f"module 'kit.cohort' has no attribute {name!r}")
