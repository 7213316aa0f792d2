"""``python -m bench.idle``: the command line is in run.py."""

import sys

from bench.idle.run import main

sys.exit(main())
