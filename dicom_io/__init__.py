"""Reading DICOM pixels and geometry; building SEG and SR (pydicom, highdicom)."""
