"""`python -m reconciler`: the same command line as the `reconciler` script."""

import sys

from reconciler.cli.main import main

sys.exit(main())
