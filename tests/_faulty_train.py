"""A training run with injected faults, in its own interpreter (for DDP and exit-code tests):
``python tests/_faulty_train.py 'nan-loss@5' <train flags>``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _train_helpers import Faults  # noqa: E402

from posenc.cli import run_train, train_parser  # noqa: E402

if __name__ == "__main__":
    spec, argv = sys.argv[1], sys.argv[2:]
    sys.exit(run_train(train_parser().parse_args(argv), hooks=Faults(spec)))
