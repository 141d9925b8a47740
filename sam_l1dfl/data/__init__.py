"""Data: the synthetic PSMA PET/CT phantom (``sam_l1dfl.data.synthetic``), case discovery
(``discovery``), the one reader of images, masks and cases (``io``), the one voxel-grid type
``Grid`` and the network crop ``CropGeometry`` (``geometry``), lesions (``lesions``), preprocessing
and training datasets, and the DICOM path (the ``dicom`` sub-package: reading, SUV, synthetic
studies).  Submodules are imported explicitly; nothing heavy here."""
