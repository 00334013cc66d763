"""The client side of the peers' timing servers (tools/llama_cpp_peer.py, tools/rwkv_cpp_peer.py):
a peer runs in its own interpreter, started once, and answers one JSON line per JSON request, so
that its rounds interleave with ours while its models stay loaded."""
from __future__ import annotations

import json
import subprocess


class TimingServer:
    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} timing server exited (code {self.proc.wait()}); see its stderr")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            code = self.proc.wait()
            raise RuntimeError(f"the {self.name} timing server failed (code {code}): {line[:500]}") from None

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
