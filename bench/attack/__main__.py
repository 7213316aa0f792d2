"""``python -m bench.attack``: the command line is in run.py."""

import sys

from bench.attack.run import main

sys.exit(main())
