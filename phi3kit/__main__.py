"""`python -m phi3kit`: the same command line as `phi3kit`."""

import sys

from .cli import main

sys.exit(main())
