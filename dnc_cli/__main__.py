"""`python -m dnc_cli <command> ...`: the same as `dnc <command> ...`."""

from dnc_cli.cli import main

main()
