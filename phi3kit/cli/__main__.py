"""`python -m phi3kit.cli`: the same command line as `phi3kit`."""

import sys

from . import main

sys.exit(main())
