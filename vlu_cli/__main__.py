"""`python -m vlu_cli ...` runs the `vlu` command."""
import sys

from vlu_cli import main

sys.exit(main())
