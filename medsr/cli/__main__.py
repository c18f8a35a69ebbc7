"""`python -m medsr.cli`: the `medsr` command."""

import sys

from medsr.cli import main

sys.exit(main())
