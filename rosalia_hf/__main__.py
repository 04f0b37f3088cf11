"""``python -m rosalia_hf``: the ``rosalia`` console script (:mod:`rosalia_hf.cli`)."""

import sys

from rosalia_hf.cli import main

if __name__ == "__main__":
    sys.exit(main())
