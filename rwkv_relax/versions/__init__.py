"""One folder per RWKV version (see :mod:`rwkv_relax.registry` for what each holds)."""
