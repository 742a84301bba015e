"""``python -m harvest.ops.cli``: the ``harvest`` command (:func:`harvest.ops.cli.main`)."""

import sys

from harvest.ops.cli import main

sys.exit(main())
