"""The ``quantsense`` command: :mod:`.parser` builds the flags from the registries, :mod:`.main` parses, calls the
library and prints."""

from quantsense.cli.main import main
from quantsense.cli.parser import build_parser

__all__ = ["build_parser", "main"]
