"""sam-l1dfl: fine-tune SAM-Med3D on PSMA PET/CT lesions with the L1-weighted Dice Focal Loss.

Data flow (one subpackage/module per stage)::

    NIfTI --> data (read, geometry, lesions, crops) --> prompts --> model --> losses
          --> training --> inference --> metrics --> export

Shared by every stage: ``errors`` (one-line user errors), ``io_utils`` (atomic writes,
checksums, compact JSON), ``formats`` (the file names and format tags of what is written).
"""

__version__ = "0.1.0"
