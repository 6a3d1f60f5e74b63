"""``python -m scripts <command> [flags]``: the ``transfer-zoo`` command without installing it."""

import sys

from scripts.main import run

sys.exit(run(["python -m scripts", *sys.argv[1:]]))
