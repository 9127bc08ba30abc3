"""``python -m netns ARGS`` is ``l2bridge lab ARGS``."""

import sys

from netns.cli import main

raise SystemExit(main(sys.argv[1:]))
