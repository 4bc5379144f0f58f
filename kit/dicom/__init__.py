"""kit.dicom."""
