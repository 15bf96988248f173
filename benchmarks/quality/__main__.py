"""``python -m benchmarks.quality``: see `benchmarks.quality.run`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
