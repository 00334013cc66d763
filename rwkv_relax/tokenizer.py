"""``rwkv_relax.tokenizer``: the tokenizers under a short, stable name (they live in
``runtime/tokenizers/``). Importing it needs neither TVM nor torch."""
from .runtime.tokenizers import *  # noqa: F401,F403
from .runtime.tokenizers import __all__  # noqa: F401
