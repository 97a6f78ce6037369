"""Infrastructure shared by every layer (as BasicSR's `basicsr/utils`): nothing here imports models or the CLI."""
