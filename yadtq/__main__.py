"""``python -m yadtq``: the command line, the same as the ``yadtq`` console script."""

import sys

from yadtq.cli import main

if __name__ == "__main__":
    sys.exit(main())
