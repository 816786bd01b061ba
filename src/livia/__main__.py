"""`python -m livia`."""

import sys

from livia.cli import main

sys.exit(main())
