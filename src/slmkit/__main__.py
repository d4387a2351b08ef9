"""`python -m slmkit ARGS` is `slm ARGS`; `torchrun ... -m slmkit train ARGS` (and `slm train --nproc N`) start
training processes this way."""

import sys

from slmkit.cli import main

sys.exit(main())
