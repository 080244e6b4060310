"""`python -m phi3kit.cli`: the same command line as `phi3kit`."""

from . import run

run()
