"""`python -m vlu_plugin.test -opt X.yml [BasicSR flags]`: BasicSR's test pipeline with the plugin registered."""
import os
import sys

import vlu_plugin  # noqa: F401  (shims and registration before BasicSR runs)


def main(argv=None):
    """Run BasicSR's testing with results under the current directory."""
    from basicsr.test import test_pipeline
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    test_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
