"""An OpenAI-compatible HTTP server over one runtime RNNState (continuous batching, a state cache
for conversations); run it with ``python -m rwkv_relax.serve``. Runtime-side: it imports
``rwkv_relax.runtime`` and leaf modules, never the compiler."""
