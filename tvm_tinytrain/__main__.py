"""`python -m tvm_tinytrain` is the `tinytrain` command."""

import sys

from .cli import main

sys.exit(main())
