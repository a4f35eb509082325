"""``pacsai grafana``: push the dashboards to Grafana, or export the file-provisioning folder.

``register`` is the ``pacsai.commands`` entry point: the ``pacsai`` CLI calls it with its
sub-parsers. Each command's ``func(args)`` returns the exit status: 0 done, 1 Grafana refused
or could not be reached, 2 a usage problem (e.g. the token variable is not set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from ops.grafana import FOLDER_TITLE, ProvisionError, connect, export_provisioning, provision, token_from_env

__all__ = ["cmd_export", "cmd_provision", "register"]

PROG = "pacsai grafana"


def cmd_provision(args: argparse.Namespace) -> int:
    """Push every dashboard into the folder, overwriting the same uids."""
    try:
        token = token_from_env(args.token_env)
    except ConfigError as exc:
        print(f"{PROG} provision: {'; '.join(exc.problems)}", file=sys.stderr)
        return 2
    api = connect(args.url, token, ca_file=args.ca_file)
    try:
        done = provision(api, folder=args.folder)
    except ProvisionError as exc:
        print(f"{PROG} provision: {exc}", file=sys.stderr)
        return 1
    print(f"{len(done.dashboard_uids)} dashboards in folder {args.folder!r} (uid {done.folder_uid}) at {args.url}")
    for uid in done.dashboard_uids:
        print(f"  {args.url.rstrip('/')}/d/{uid}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the file-provisioning folder."""
    files = export_provisioning(args.dir, folder=args.folder)
    print(f"wrote {len(files)} files under {args.dir}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``grafana provision`` and ``grafana export`` to the ``pacsai`` CLI's sub-parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    grafana = subparsers.add_parser(
        "grafana",
        help="Grafana dashboards: provision over the API, or export the provisioning folder",
        epilog="Example: pacsai grafana provision --url https://grafana.example.org --token-env GRAFANA_TOKEN",
        formatter_class=fmt,
    )
    commands = grafana.add_subparsers(dest="grafana_command", required=True, metavar="COMMAND")
    push = commands.add_parser(
        "provision",
        help="push the five dashboards into a folder (idempotent: overwrites them by uid)",
        epilog="Example: GRAFANA_TOKEN=glsa_... pacsai grafana provision --url http://grafana:3000 --token-env GRAFANA_TOKEN",
        formatter_class=fmt,
    )
    push.add_argument("--url", required=True, help="Grafana's base URL, e.g. https://grafana.example.org")
    push.add_argument(
        "--token-env",
        required=True,
        metavar="VAR",
        help="name of the environment variable holding a service-account token (Editor role)",
    )
    push.add_argument("--folder", default=FOLDER_TITLE, metavar="NAME", help=f"folder title (default {FOLDER_TITLE!r})")
    push.add_argument("--ca-file", type=Path, metavar="FILE", help="CA bundle to check Grafana's TLS certificate with")
    push.set_defaults(func=cmd_provision)
    export = commands.add_parser(
        "export",
        help="write Grafana's file-provisioning folder (dashboards, file provider, data source)",
        epilog="Example: pacsai grafana export --dir deploy/grafana/provisioning",
        formatter_class=fmt,
    )
    export.add_argument("--dir", required=True, type=Path, help="the provisioning root to write")
    export.add_argument(
        "--folder", default=FOLDER_TITLE, metavar="NAME", help=f"folder title (default {FOLDER_TITLE!r})"
    )
    export.set_defaults(func=cmd_export)
