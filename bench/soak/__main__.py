"""``python -m bench.soak``: the command line is in run.py."""

import sys

from bench.soak.run import main

sys.exit(main())
