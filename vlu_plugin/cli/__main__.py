"""`python -m vlu_plugin.cli ...` runs the `vlu` command."""
import sys

from vlu_plugin.cli import main

sys.exit(main())
