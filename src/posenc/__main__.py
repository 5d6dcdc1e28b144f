"""``python -m posenc ...``: the same command as ``posenc ...``."""

import sys

from posenc.cli import main

sys.exit(main())
