"""``python -m sam_l1dfl``: the ``sam-l1dfl`` command (:func:`sam_l1dfl.cli.main`)."""

import sys

from sam_l1dfl.cli import main

sys.exit(main())
