import sys

from mimic_ils.cli import main

sys.exit(main())
