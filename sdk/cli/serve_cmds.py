"""`covip serve`: the local HTTP API (OpenAI-compatible chat + memory endpoints) and the photo-chat page."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from covip.sdk.cli.common import CliState, pass_state
from covip.sdk.cli.inference import InferenceOptions, _open_assistant, inference_options

log = logging.getLogger(__name__)

__all__ = ["register"]


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 = any free port; the URL is printed at start).")
@click.option("--token", envvar="COVIP_API_TOKEN", show_envvar=True, metavar="TOKEN",
              help="API token: every request must send 'Authorization: Bearer TOKEN' (prefer the environment "
                   "variable: a --token value is visible to other users in the process list).")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Refuse request bodies larger than this (413), before reading them.")
@click.option("--timeout-s", default=300.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Per-request time limit, waiting for the model included (504 past it).")
@click.option("--allow-dir", "allow_dirs", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder whose photos chat requests may name by local path (repeatable; the memory's "
                   "photo store is always allowed). It may not be or hold the memory home, nor lie in its index, "
                   "locks or tmp folder. Otherwise photos must be sent as data URLs.")
@click.option("--max-decodes", default=2, show_default=True, type=click.IntRange(min=1),
              help="Photos decoded, and requests with bodies over 1 MiB served, at the same time; more wait "
                   "(bounds the server's memory whatever the number of clients).")
@inference_options
@pass_state
def serve_cmd(state: CliState, host: str, port: int, token: str | None, max_body_mb: float, timeout_s: float,
              allow_dirs: tuple[Path, ...], max_decodes: int, opts: InferenceOptions) -> None:
    """Serve the memory over HTTP on this machine, with a photo-chat web page.

    Opens the model once and shares it among all requests (one answer at a time; the others queue).
    Endpoints: an OpenAI-compatible POST /v1/chat/completions (image_url parts, `user` = memory
    owner, streaming), GET /v1/models, the memory under /v1/users/... (remember, search, concepts,
    photos, forget, export) and POST /v1/import; the OpenAPI document is /openapi.json; the web
    page is /. Listens on 127.0.0.1 unless --host says otherwise, and then an API token is required.
    Needs `pip install 'covip[serve]'`.

    \b
    Example:
      covip serve                                   # http://127.0.0.1:8765/
      COVIP_API_TOKEN=s3cret covip serve --host 0.0.0.0 --port 8080
      covip serve --model ./export/qwen3-vl-2b-gguf --allow-dir ~/Pictures
    """
    from covip.sdk.server import ServeConfig, require_serve
    from covip.sdk.server.config import check_allowed_dirs

    config = ServeConfig(host=host, port=port, token=token or None, max_body_mb=max_body_mb,
                         timeout_s=timeout_s, allowed_dirs=allow_dirs,
                         max_decodes=max_decodes)  # refuses a public address without token
    check_allowed_dirs(config.allowed_dirs, state.home_dir)  # no folder holding the home's own files
    require_serve()  # exit 6 with the pip line before any model loads
    from covip.sdk.server.serve import bind_socket, serve

    bind_socket(config.host, config.port).close()  # a taken port fails now, not after the model loaded
    mem = state.memory()
    assistant = _open_assistant(state, mem, opts)

    def ready(url: str) -> None:
        click.echo(f"covip serve: model {assistant.engine.model_id}, memory {mem.home}", err=True)
        if config.loopback:
            click.echo("covip serve: listening on this machine only"
                       + (" (API token required)" if config.token else ""), err=True)
        else:
            click.echo(f"covip serve: listening on {config.host}, reachable from other machines: every request "
                       "must send 'Authorization: Bearer <token>' (the web page asks for it)", err=True)
        click.echo(f"covip serve: web page {url}/  API {url}/v1  OpenAPI {url}/openapi.json  (Ctrl-C stops)",
                   err=True)

    serve(assistant, config, on_ready=ready, log_level="info" if state.verbose else "warning")


def register(group: click.Group) -> None:
    """Add `covip serve` to the ``covip`` group."""
    group.add_command(serve_cmd)
