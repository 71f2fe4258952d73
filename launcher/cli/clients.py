"""`runq clients`: ready configuration for the tools people point at a local server — aider, Open WebUI — from what
a running runq server or router says it serves.

CLI layer. The models, their context and sampling come from the server itself (a router: each model's command in
/models; one llama-server: /props), so the files match what really runs. The text is view/clients.py's; files are
written atomically, readable only by the user when they hold the key.
"""

from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.cli.common import read_api_key
from launcher.errors import EXIT_OK, RunqError, UsageError

if TYPE_CHECKING:
    from launcher.view.clients import ClientModel


def served_models(url: str, key: str | None) -> list[ClientModel]:
    """What the server at `url` serves, as clients see it."""
    from launcher.llama.server import http_json
    from launcher.view.clients import from_args, from_props

    try:
        data = http_json(url, "/v1/models", key, timeout=10).get("data", [])
        out = []
        for m in data:
            args = (m.get("status") or {}).get("args")
            if isinstance(args, list):  # a router: the command it runs the model with
                out.append(from_args(str(m["id"]), [str(a) for a in args]))
            else:
                out.append(from_props(str(m["id"]), http_json(url, "/props", key, timeout=10)))
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise UsageError(f"{url} wants an API key", hint="add --api-key-file FILE (the server's key)") from None
        raise RunqError(f"{url} answered HTTP {e.code} to /v1/models", hint="is it a llama-server?") from None
    except (OSError, ValueError) as e:
        hint = "start one first: runq serve, or runq run MODEL --server; or give --url"
        raise RunqError(f"nothing answers at {url} ({getattr(e, 'reason', e)})", hint=hint) from None
    if not out:
        raise RunqError(f"{url} serves no model", hint="see `runq serve --help`")
    return out


def cmd_clients(args: argparse.Namespace) -> int:
    from launcher.paths import config_dir
    from launcher.plan.inputs import ServerOptions
    from launcher.service.manage import write_atomic
    from launcher.view import clients as view

    url = args.url.rstrip("/").removesuffix("/v1")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {args.url}: not an http:// address", hint="e.g. --url http://127.0.0.1:8080")
    key_file = str(Path(args.api_key_file).resolve()) if args.api_key_file else None
    key = read_api_key(ServerOptions(api_key_file=key_file)) if key_file else None
    models = served_models(url, key)
    out = Path(args.dir) if args.dir else config_dir() / "clients"
    settings, metadata = out / ".aider.model.settings.yml", out / ".aider.model.metadata.json"
    mode = 0o600 if key else 0o644  # aider.conf.yml and open-webui.env then hold the key
    files = {
        settings: view.aider_settings(models, url),
        metadata: view.aider_metadata(models),
        out / "aider.conf.yml": view.aider_conf(models, url, str(settings), str(metadata), key),
        out / "open-webui.env": view.open_webui_env(url, key),
    }
    for path, text in files.items():
        write_atomic(path, text, mode=mode)
    print(f"{url} serves {len(models)} model(s):")
    for m in models:
        print(f"  {m.id}: context {f'{m.ctx:,}' if m.ctx else 'unknown'} tokens"
              + (", " + ", ".join(f"{k} {v:g}" for k, v in m.sampling.items()) if m.sampling else ""))  # fmt: skip
    for line in view.client_lines(url, key_file, key is not None, [m.id for m in models])[:-1]:
        print(line)
    print(f"Wrote {', '.join(p.name for p in files)} in {out}" + (" (mode 0600: they hold the key)" if key else ""))
    print(f"  aider:      aider --config {out / 'aider.conf.yml'}   (another model: --model openai/ID)")
    print(f"  Open WebUI: docker run --network=host --env-file {out / 'open-webui.env'} ghcr.io/open-webui/open-webui")
    return EXIT_OK
