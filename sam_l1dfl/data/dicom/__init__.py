"""The DICOM path: PET/CT studies in, SUV out, and the synthetic studies that test it.

* :mod:`.read`: finding studies and series (pydicom), reading image series (SimpleITK), SEG and
  RTSTRUCT contours on the PET grid, and ``sam-l1dfl dicom``'s conversion to autoPET cases;
* :mod:`.suv`: SUVbw factors from the headers (QIBA vendor-neutral pseudo-code);
* :mod:`.suv_sanity`: one warning line when an image called SUV does not look like SUV (also used
  by ``data --check full``, ``infer`` and ``evaluate`` on NIfTI input);
* :mod:`.synth`: synthetic DICOM PET/CT studies of the phantom (``sam-l1dfl synth --dicom``).

Submodules are imported explicitly; nothing is imported here (``suv_sanity`` stays light).
"""
