"""`tagseg serve`: the engine as an HTTP server. Its flags and handler live with the server (tagseg.server)."""

from __future__ import annotations


def register(commands) -> None:
    """Add `serve` to the `tagseg` subcommands."""
    from ..server import add_serve_command

    add_serve_command(commands)
