"""`leantune serve`: finished runs behind an OpenAI-compatible HTTP API (docs/serving.md)."""
from __future__ import annotations

import typer

from .app import app, console, err_console, quiet_libraries, user_errors

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@app.command()
@user_errors
def serve(runs: list[str] = typer.Argument(..., help="Runs to serve: RUN (named after its folder) or NAME=RUN; "
                                                     "several share one base model, as LoRA adapters."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 opens the server "
                                                               "to the network (use --api-key)."),
          port: int = typer.Option(8000, "--port", min=1, max=65535),
          api_key: str | None = typer.Option(None, "--api-key", envvar="LEANTUNE_API_KEY",
                                                help="Require 'Authorization: Bearer KEY' on every request."),
          max_tokens_limit: int = typer.Option(2048, "--max-tokens-limit", min=1,
                                               help="The most tokens one request may ask for."),
          default_max_tokens: int = typer.Option(256, "--default-max-tokens", min=1,
                                                 help="Tokens generated when a request does not say."),
          max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1,
                                             help="Largest request body accepted (413 above).")):
    """Serve runs over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    from ..errors import LeantuneError
    from ..serving.specs import read_specs

    specs = read_specs(runs)
    if default_max_tokens > max_tokens_limit:
        raise LeantuneError(f"--default-max-tokens {default_max_tokens} is over --max-tokens-limit "
                            f"{max_tokens_limit}; lower the one or raise the other")
    if host not in LOCAL_HOSTS and not api_key:
        err_console.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who can reach "
                          f"this port can use the models", highlight=False, soft_wrap=True)
    quiet_libraries()
    import uvicorn

    from ..serving.app import Limits, create_app
    from ..serving.models import load_served

    served = load_served(specs)
    limits = Limits(max_body_bytes=max_body_bytes, max_tokens=max_tokens_limit, default_max_tokens=default_max_tokens)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving {', '.join(served.entries)} at http://{shown}:{port}/v1", highlight=False, soft_wrap=True)
    uvicorn.run(create_app(served, api_key, limits), host=host, port=port, log_level="info")
