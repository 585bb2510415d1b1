"""`python -m ltc_fast`: the `ltc-fast` command."""

import sys

from .cli import main

sys.exit(main())
