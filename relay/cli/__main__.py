"""``python -m relay.cli``: the same entry point as the ``relay`` script."""

from __future__ import annotations

import sys

from relay.cli.entry import main

sys.exit(main())
