"""Scale-out on Dask distributed: the big jobs (index, de-identification, HL7 and
NDJSON archives to frames, cohort retrieval) on a cluster the institution runs.

:func:`kit.scale.cluster.dask_client` gives the ``distributed.Client`` for an
address (``"local"`` for a LocalCluster on this machine, ``"tcp://host:8786"``
for a running scheduler, e.g. one dask-jobqueue starts on SLURM), or for the
``[dask]`` section of kit.toml. Nothing kit-specific runs on the workers beyond
the installed package: the tasks are the same pure functions the local path calls.

- :mod:`kit.scale.dicom`: :func:`~kit.scale.dicom.index_dataset` (the DICOM index) and
  :func:`~kit.scale.dicom.deid_dataset` (de-identification; one re-identification map,
  merged and written by the client only);
- :mod:`kit.scale.frames`: :func:`~kit.scale.frames.hl7_dataset` (HL7 files to tables) and
  :func:`~kit.scale.frames.fhir_dataset` (NDJSON to frames per resource type);
- :mod:`kit.scale.run`: partitions on the cluster, ``part-NNNNN.parquet`` files, typed failures.
"""

from __future__ import annotations

__all__: list[str] = []
