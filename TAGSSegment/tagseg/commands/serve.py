"""`tagseg serve`: the engine as an HTTP server. Its options are here; the handler, `tagseg.server.serve`, is
imported when the command runs."""

from __future__ import annotations

import argparse

from .common import DEVICE, Command, Reporter, option

DEFAULT_MAX_UPLOAD_MB = 2048


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Serve until stopped (`tagseg.server.serve`)."""
    from ..server import serve

    return serve(args, reporter)


COMMANDS = (
    Command(
        "serve",
        help="run the engine as a local or remote HTTP server (used by the Slicer extension)",
        description='Serve the tagseg engine over HTTP. Prints one JSON line {"url": ..., "pid": ...} on '
        "stdout when ready. Any address other than loopback needs --token-file. The connection is "
        "not encrypted: reach a remote server through an SSH tunnel or a TLS proxy.",
        run=run,
        options=(
            option("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"),
            option("--port", type=int, default=0, help="port (default: 0 = any free port)"),
            option(
                "--token-file",
                metavar="FILE",
                help="file holding the access token (first line); created with a random token if missing",
            ),
            DEVICE,
            option(
                "--max-upload-mb",
                type=float,
                default=DEFAULT_MAX_UPLOAD_MB,
                metavar="N",
                help=f"largest volume accepted, in MB (default: {DEFAULT_MAX_UPLOAD_MB})",
            ),
            option(
                "--exit-with-stdin",
                action="store_true",
                help="stop when standard input closes (a parent process that dies takes the server along)",
            ),
        ),
    ),
)
