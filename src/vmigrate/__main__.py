"""`python -m vmigrate` runs the CLI."""

from vmigrate.cli import main

main()
