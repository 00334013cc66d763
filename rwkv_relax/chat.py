"""``python -m rwkv_relax.chat --model <dir> [--model-lib <lib>] [--device cpu] [--seed N]``

Chat with a model on stdin / stdout, from a terminal or a pipe: each line is a message, the reply
is streamed token by token. A ``\\n`` typed in a line is a line break. Commands:

  /reset        forget the conversation
  /stats        prefill and decode tokens and speed of the last reply
  /save FILE    write the conversation and its RNN state to FILE (safetensors)
  /load FILE    continue a conversation saved with /save
  /help         this list
  /exit         leave (so does end of input)

Errors are one ``error:`` line on stderr; the session goes on. Ctrl-C stops a reply."""
from __future__ import annotations

import argparse
import sys

from .cli import OneLineParser, one_line_errors, printable_stdout, unexpected_errors_in_one_line
from .errors import RWKVRelaxError
from .generate import add_engine_flags, open_engine, sampling_overrides

PROMPT = ">>> "
COMMANDS = ("/reset", "/stats", "/save FILE", "/load FILE", "/help", "/exit")


class ChatCommandError(RWKVRelaxError):
    """An unknown command or a command used wrongly."""


class Repl:
    """The read-reply loop over a :class:`~rwkv_relax.runtime.chat_session.ChatSession`."""

    def __init__(self, session, stdin=None, stdout=None, stderr=None):
        self.session = session
        self.stdin, self.stdout, self.stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
        self.interactive = self.stdin.isatty()

    def read(self) -> str | None:
        """One line, or None at end of input."""
        try:
            if self.interactive and self.stdin is sys.stdin:
                return input(PROMPT)  # line editing through readline where Python has it
            if self.interactive:
                self.stdout.write(PROMPT)
                self.stdout.flush()
            line = self.stdin.readline()
            return line.rstrip("\r\n") if line else None
        except EOFError:
            return None

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def error(self, message: str) -> None:
        self.stdout.flush()
        print(f"error: {message}", file=self.stderr, flush=True)

    def run(self) -> int:
        while True:
            try:
                line = self.read()
            except KeyboardInterrupt:  # Ctrl-C at the prompt leaves
                self.say("")
                return 0
            if line is None:
                if self.interactive:
                    self.say("")
                return 0
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "exit":
                        return 0
                else:
                    self.reply(line.replace("\\n", "\n"))
            except KeyboardInterrupt:
                self.say("\n[reply stopped]")
            except RWKVRelaxError as err:
                self.error(str(err))
            except Exception as err:  # a bug must not end the conversation either
                first = (str(err).strip().splitlines() or [""])[0][:200]
                self.error(f"unexpected {type(err).__name__}: {first}")

    def reply(self, message: str) -> None:
        for piece in self.session.send(message):
            self.stdout.write(piece)
            self.stdout.flush()
        self.say("")

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/save", "/load") and not arg:
            raise ChatCommandError(f"usage: {name} FILE")
        if name not in ("/save", "/load") and arg:
            raise ChatCommandError(f"{name} takes no argument")
        if name == "/exit":
            return "exit"
        if name == "/reset":
            self.session.reset()
            self.say("[conversation reset]")
        elif name == "/stats":
            self.say(str(self.session.stats))
        elif name == "/save":
            path = self.session.save(arg)
            self.say(f"[saved {self.session.n_tokens} tokens to {path}]")
        elif name == "/load":
            self.session.load(arg)
            self.say(f"[loaded {self.session.n_tokens} tokens, {len(self.session.messages)} messages "
                     f"from {arg}]")
        elif name == "/help":
            self.say(__doc__.split("Commands:", 1)[1].split("Errors", 1)[0].strip("\n"))
        else:
            raise ChatCommandError(f"unknown command '{name}'; valid: {', '.join(COMMANDS)}")
        return None


@one_line_errors
def main(argv=None) -> int:
    p = OneLineParser(prog="python -m rwkv_relax.chat", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_flags(p)
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    p.add_argument("--conv-template", default=None, help="override the model directory's template")
    args = p.parse_args(argv)
    printable_stdout()
    with unexpected_errors_in_one_line():
        engine = open_engine(args, args.conv_template)
        session = engine.chat_session(args.system, seed=args.seed, max_tokens=args.max_tokens,
                                      **sampling_overrides(args))
    repl = Repl(session)
    if repl.interactive:
        repl.say(f"{engine.model.metadata.get('model_name', args.model)} ({engine.conv_template.name}) "
                 f"on {args.device}; /help for commands, /exit to leave")
    return repl.run()


if __name__ == "__main__":
    sys.exit(main())
