"""`python -m clipseg` runs the command-line interface."""

from .cli import main

main()
