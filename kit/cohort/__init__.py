"""Research cohorts: pull a cohort's studies out of a PACS politely and resumably.

:func:`pull` (``kit cohort pull``) resolves accession numbers, study UIDs or
MRNs and retrieves every study once, under caps on concurrent associations
and images per second, with a durable journal so a killed job resumes where
it stopped. See :mod:`kit.cohort.pull`; the pure rules are in
:mod:`kit.cohort.plan`, the limits in :mod:`kit.cohort.limiter`.
"""

from __future__ import annotations

from kit.cohort.pull import CohortPull, pull

__all__ = ["CohortPull", "pull"]
