"""What the `vlu` commands are built on, above the models: `Restorer`, the report and its figures, the benchmark,
the unfolding-stage dumps. Nothing in archs, data, models or utils imports them."""
