"""The nn.Module parts every RWKV version is built from (layers, the runtime-managed state, the
block and language-model shell with its exported interface) and ``ops``, the kernel bridge.
The versions' own modules live in ``versions/<v>/model.py``."""
