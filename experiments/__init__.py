"""The reference study's original entry points, kept as thin wrappers over ``quantsense``'s CLI.

Each takes the same flags as the matching ``quantsense`` subcommand, e.g.
``python -m experiments.layer_sensitivity --model DIR --data validation.tsv --bits 8 4``.
"""

import sys


def run(subcommand: str) -> None:
    from quantsense.cli import main

    sys.exit(main([subcommand, *sys.argv[1:]]))
