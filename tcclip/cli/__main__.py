"""`python -m tcclip.cli ...`: the same as the `tcclip` console script (SLURM jobs run it with the submitting
Python)."""

import sys

from tcclip.cli import console_main

sys.exit(console_main())
