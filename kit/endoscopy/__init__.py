"""kit.endoscopy.

Endoscopy suite integration. Pure: :mod:`~kit.endoscopy.frame` (the Frame every
module passes around), :mod:`~kit.endoscopy.vendors` (vendor profiles as data),
:mod:`~kit.endoscopy.capture` (frames to VL Endoscopic / Video Endoscopic DICOM),
:mod:`~kit.endoscopy.detections` (per-frame detections to an AnalysisResult).
I/O: :mod:`~kit.endoscopy.procedures` (worklist and ES studies in the PACS),
:mod:`~kit.endoscopy.store` (capture a procedure: store and find again).
"""
