"""``python -m bench.faults``: the command line is in run.py."""

import sys

from bench.faults.run import main

sys.exit(main())
