"""`python -m ltc_fast`: the `ltc-fast` command."""

import sys

from .app.cli import main

sys.exit(main())
