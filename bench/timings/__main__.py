"""``python -m bench.timings``: the command line is in run.py."""

import sys

from bench.timings.run import main

sys.exit(main())
