"""`python -m varlit.sweeps ...`: see `varlit.sweeps.cli`."""

import sys

from .cli import main

sys.exit(main())
