"""`python -m vlu_plugin.train -opt X.yml [BasicSR flags]`: BasicSR's train pipeline with the plugin registered."""
import os
import sys

import vlu_plugin  # noqa: F401  (shims and registration before BasicSR runs)


def main(argv=None):
    """Run BasicSR's training with experiments under the current directory."""
    from basicsr.train import train_pipeline
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    train_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
