"""The `rwkv` package (ChatRWKV's model code) as the numerical reference, in a process of its own.

The package reads its switches (``RWKV_JIT_ON``, ``RWKV_CUDA_ON``, ``RWKV_V7_ON``) when it is
imported, and with ``RWKV_V7_ON=1`` its ``RWKV`` *is* the RWKV-7 class (v4-v6 are then gone from
that process). So each reference runs in a child process started with its own environment, and
one test session can compare every version. Requests and replies are pickles over the child's
stdin / stdout (its own prints go to stderr).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path


class ChatRWKVProcess:
    """ChatRWKV's ``RWKV`` (``RWKV_x070`` for RWKV-7) on a BlinkDL ``.pth``, in a child process.

    ``forward(tokens, state) -> (logits (V,) float32, state)``: the state is the package's own list
    of per-layer tensors (as numpy arrays), never modified in place."""

    def __init__(self, pth: str | Path, v7: bool = False, strategy: str = "cpu fp32"):
        env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="0", RWKV_V7_ON="1" if v7 else "0")
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(pth), strategy, str(int(v7))],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._call("ping")

    def _call(self, request):
        pickle.dump(request, self._proc.stdin)
        self._proc.stdin.flush()
        try:
            reply = pickle.load(self._proc.stdout)
        except EOFError:
            raise RuntimeError(f"the rwkv package process died (exit {self._proc.wait()})") from None
        if isinstance(reply, Exception):
            raise reply
        return reply

    def forward(self, tokens, state=None):
        return self._call((list(map(int, tokens)), state))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _serve(pth: str, strategy: str, v7: bool) -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the package's prints go to stderr, not into the reply stream
    requests = sys.stdin.buffer
    try:
        import torch
        from rwkv.model import RWKV  # pylint: disable=import-outside-toplevel
        # RWKV_x070 appends ".pth" itself; the v4-v6 class takes either form
        model = RWKV(model=pth[:-len(".pth")] if v7 else pth, strategy=strategy,
                     **({} if v7 else {"verbose": False}))
    except Exception as err:  # pylint: disable=broad-except
        model = err
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            if isinstance(model, Exception):
                raise model
            if request == "ping":
                reply = "ready"
            else:
                tokens, state = request
                state = None if state is None else [torch.from_numpy(s.copy()) for s in state]
                logits, state = model.forward(tokens, state)
                reply = (logits.float().numpy(), [s.float().numpy() for s in state])
        except Exception as err:  # pylint: disable=broad-except
            reply = RuntimeError(f"{type(err).__name__}: {err}")
        pickle.dump(reply, replies)
        replies.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
