"""The playground: `llmpath serve`, a local web app and an OpenAI-compatible API over the runs folder."""
