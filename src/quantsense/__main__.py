"""``python -m quantsense``: the same command line as ``quantsense``."""

import sys

from quantsense.cli import main

sys.exit(main())
