"""Data: the synthetic PSMA PET/CT phantom (``sam_l1dfl.data.synthetic``), case discovery,
reading, geometry and preprocessing.  Submodules are imported explicitly; nothing heavy here."""
