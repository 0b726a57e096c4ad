import sys

from quantsense.cli.main import main

sys.exit(main())
