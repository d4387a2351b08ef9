"""`python -m slmkit.cli ...` is `slm ...`."""

import sys

from slmkit.cli import main

sys.exit(main())
