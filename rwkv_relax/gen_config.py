"""``python -m rwkv_relax.gen_config <checkpoint | preset> --quantization q4f16_1
--conv-template rwkv-world -o <dir>``: writes ``mlc-chat-config.json`` and copies the tokenizer."""
from __future__ import annotations

import json
import sys

from .cli import OneLineParser, add_config_flags, config_overrides, one_line_errors
from .quantization import MODES
from .runtime.conversation import TEMPLATES


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m rwkv_relax.gen_config", description=__doc__)
    p.add_argument("model", help="checkpoint file/folder, preset name, or config JSON")
    p.add_argument("--quantization", required=True, help=", ".join(MODES))
    p.add_argument("--conv-template", default="rwkv-world", help=f"one of {', '.join(TEMPLATES)}")
    p.add_argument("--tokenizer", default=None, help="tokenizer file or folder (default: beside the checkpoint)")
    p.add_argument("--keep-embedding-head", action="store_true")
    add_config_flags(p)
    p.add_argument("-o", "--output", required=True, help="model directory")
    return p


@one_line_errors
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .model_dir import gen_config
    path = gen_config(args.model, args.quantization, args.conv_template, args.output, args.tokenizer,
                      config_overrides(args), args.keep_embedding_head)
    cfg = json.loads(path.read_text())
    if not cfg["tokenizer_files"]:
        print("warning: no tokenizer found; pass --tokenizer to copy one", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
