"""`leantune serve`: an OpenAI-compatible HTTP server for finished runs (one base, adapters per request)."""
