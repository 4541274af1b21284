#!/usr/bin/env python3
"""The seed's replay entry point; the tool itself is ``mercurystream.replay.cli`` (also ``mercury-replay``)."""

import sys

try:
    from mercurystream.replay.cli import main
except ImportError as exc:
    print(
        f"replay.py: cannot import the mercurystream package ({exc}); "
        "run `make install` first, or use .venv/bin/python replay.py",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
