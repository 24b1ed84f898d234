"""`python -m bot` is the `ponder` command."""

import sys

from bot.cli import main

sys.exit(main())
