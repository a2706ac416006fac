"""`python -m minimind_spec` runs the command line."""

from .cli import main

main()
