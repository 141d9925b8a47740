"""sam-l1dfl: fine-tune SAM-Med3D on PSMA PET/CT lesions with the L1-weighted Dice Focal Loss.

Data flow (one subpackage/module per stage)::

    NIfTI --> data (read, geometry, lesions, crops) --> prompts --> model --> losses
          --> training --> inference --> metrics --> export
"""

__version__ = "0.1.0"
