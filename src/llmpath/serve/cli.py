"""`llmpath serve`: the playground and an OpenAI-compatible API over the runs folder, on 127.0.0.1.

    llmpath serve                          # http://127.0.0.1:8000 : talk to, look inside and compare the runs
    llmpath serve --runs=runs --port=8001
    python -c "import openai; print(openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-').models.list())"
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from llmpath.config import ConfigError, build_config, help_text, opt

USAGE = """usage: llmpath serve [--key=value ...]

The playground: a local web page to talk to the trained runs (streamed tokens with their probabilities), look
inside them (tokens, attention, KV cache) and compare their training curves; and an OpenAI-compatible API at
/v1 (models, completions, chat/completions) for the official openai client or any tool that speaks it.

examples:
  llmpath serve                      then open http://127.0.0.1:8000
  llmpath serve --port=8001 --runs=/data/llmpath-runs
"""


@dataclass
class ServeConfig:
    runs: str = opt("runs", "the runs folder to serve (what `make tour` and the train commands write)")
    host: str = opt("127.0.0.1", "address to listen on; 127.0.0.1 keeps it to this machine")
    port: int = opt(8000, "port to listen on", min=1, max=65535)
    device: str = opt("cpu", "where the models run: cpu | cuda | mps")
    threads: int = opt(1, "torch CPU threads (1: the fastest on a busy small machine)", min=1)
    workers: int = opt(4, "generations at once; more requests wait their turn", min=1, max=64)
    max_tokens: int = opt(1024, "most new tokens one request may ask for", min=1)
    max_body_kb: int = opt(1000, "largest request body, in KB", min=1)

    def check(self) -> None:
        if not Path(self.runs).is_dir():
            raise ConfigError(f"no runs folder at {self.runs}; train something first (`make tour`, or "
                              f"`llmpath gpt train`), or point --runs at one")


def _free(host: str, port: int) -> None:
    """Refuse a port another program holds before starting, with what to do instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another with "
                              f"--port={port + 1}, or stop the program using it") from None


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE + "\noptions:\n" + help_text(ServeConfig))
        return 0
    cfg = build_config(ServeConfig, argv)
    import torch
    import uvicorn

    from llmpath.common import get_device
    from llmpath.serve.app import Limits, create_app

    device = str(get_device(cfg.device))
    torch.set_num_threads(cfg.threads)
    _free(cfg.host, cfg.port)
    try:
        local = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        local = cfg.host == "localhost"
    if not local:
        print(f"warning: listening on {cfg.host}: other machines can reach the playground and its API (no "
              "password); use --host=127.0.0.1 to keep it to this one", file=sys.stderr)
    limits = Limits(max_body_bytes=cfg.max_body_kb * 1000, max_tokens=cfg.max_tokens, workers=cfg.workers)
    app = create_app(cfg.runs, device=device, limits=limits)
    models = app.state.store.models()
    url = f"http://{'[' + cfg.host + ']' if ':' in cfg.host else cfg.host}:{cfg.port}"
    print(f"llmpath playground: {url}   (API: {url}/v1; {len(models)} model(s) that generate in {cfg.runs}; "
          "Ctrl-C stops)")
    if not models:
        print("  no trained decoder yet: `make tour` or `llmpath gpt train` trains one; the runs page still works")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0
