"""``python -m bench.transport``: the command line is in run.py."""

import sys

from bench.transport.run import main

sys.exit(main())
