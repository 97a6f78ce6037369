"""Infrastructure shared by every layer (as BasicSR's `basicsr/utils`): the import shim and `patch_basicsr`,
option files, checkpoints, atomic writes, validation records, exact resume, the experiment lock, mixed
precision, tiling. Nothing here imports archs, data, models, tools or the CLI at module level."""
