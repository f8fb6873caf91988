"""Solution: NF4 weight memory (notebook 03). `info` is the loaded backbone's BackboneInfo."""
nf4_mib = info.num_parameters * 4 / 8 / 2**20  # noqa: F821 (defined in the notebook)
