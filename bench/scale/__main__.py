"""``python -m bench.scale``: the command line is in run.py."""

import sys

from bench.scale.run import main

sys.exit(main())
