"""`python -m llmpath ...` (and `torchrun -m llmpath ...`): the same as the `llmpath` command."""

from llmpath.cli import main

raise SystemExit(main())
