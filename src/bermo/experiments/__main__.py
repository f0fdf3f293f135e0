"""`python -m bermo.experiments ...` = `bermo-experiment ...`."""

import sys

from .cli import main

sys.exit(main())
