"""`python -m rlsd_core.cli ...` (what `torchrun ... -m rlsd_core.cli train` runs): the `rlsd` command."""

import sys

from . import main

sys.exit(main())
