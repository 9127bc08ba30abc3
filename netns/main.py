"""The ``l2bridge`` command: the site's commands, and ``l2bridge lab ...`` for the lab.

The lab sits above the site in the layers (it runs real sites), so the one
entry point that reaches both lives here, at the top: ``l2bridge lab ...`` goes
to ``netns.cli``, every other command to ``l2bridge.ops.cli``.  (``python -m
l2bridge`` is the site's commands alone: what the lab itself runs in a gateway.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from l2bridge.ops.cli import main as site_main
from netns.cli import main as lab_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["lab"]:
        return lab_main(args[1:])
    return site_main(args)


if __name__ == "__main__":
    sys.exit(main())
