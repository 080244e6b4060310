"""`python -m phi3kit`: the same command line as `phi3kit`."""

from .cli import run

run()
