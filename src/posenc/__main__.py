"""``python -m posenc ...``: the same command as ``posenc ...``."""

import sys

from posenc.cli import main

if __name__ == "__main__":  # not when a worker process re-imports it
    sys.exit(main())
