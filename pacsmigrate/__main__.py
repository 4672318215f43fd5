"""`python -m pacsmigrate` runs the command line."""

from .entry import main

main()
