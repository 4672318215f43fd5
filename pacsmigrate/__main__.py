"""`python -m pacsmigrate` runs the command line."""

from .cli import main

main()
