"""Model files: `tagseg weights` (third-party SAM/CLIP weights), `tagseg convert-checkpoint` (the TAGS authors'
.pth.tar) and `tagseg models` (installed TAGS checkpoints that --model auto picks from)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .common import JSON, PRESET, PROG, Command, Reporter, option


def run_weights(args: argparse.Namespace, reporter: Reporter) -> int:
    """List, download or verify a third-party weight file."""
    from ..weights import weights_command

    return weights_command(args.action, args.name, args.json)


def run_convert(args: argparse.Namespace, reporter: Reporter) -> int:
    """Convert the authors' checkpoint; the result is loaded once before it replaces anything (a file that cannot
    load is refused and an earlier file of that name stays)."""
    from ..tags.checkpoint import convert_authors_checkpoint, load_model
    from ..tags.config import get_preset

    src, dst = Path(args.source).expanduser(), Path(args.output).expanduser()
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    if not dst.name.endswith(".safetensors"):
        raise InputError(f"{dst}: the output must end in .safetensors")
    config = get_preset(args.preset).to_dict()
    digest = convert_authors_checkpoint(
        src,
        dst,
        task=args.task,
        preset=args.preset,
        config=config,
        object_word_mode=args.object_word_mode,
        check=load_model,
    )
    print(f"wrote {dst} (SHA-256 {digest}); install it with: {PROG} models install {dst}")
    return 0


def run_models(args: argparse.Namespace, reporter: Reporter) -> int:
    """List, install or remove installed TAGS checkpoints."""
    from .. import budget

    if args.action == "install" and args.target:
        try:
            budget.check_checkpoint_config(Path(args.target).expanduser())
        except InputError as exc:
            raise InputError(f"{Path(args.target).name}: {exc}") from None
    from ..tags import checkpoint

    if args.action == "install":
        if not args.target:
            raise InputError("models install needs a checkpoint file")
        from ..tags.checkpoint import load_model

        load_model(Path(args.target).expanduser())  # refuse what could not be loaded later
        path = checkpoint.install_checkpoint(Path(args.target).expanduser())
        print(f"installed {path}")
        return 0
    if args.action == "remove":
        if not args.target:
            raise InputError("models remove needs the SHA-256 (or its first 12 characters) or the file name")
        print(f"removed {checkpoint.uninstall(args.target)}")
        return 0
    entries = checkpoint.installed_checkpoints()
    if args.json:
        print(json.dumps({"models_dir": str(checkpoint.models_dir()), "installed": entries}, indent=2, default=str))
        return 0
    print(f"models folder {checkpoint.models_dir()}")
    for e in entries or ():
        print(
            f"  {e.get('anatomy', '?'):10s} {e.get('preset', '?'):9s} {str(e.get('sha256', ''))[:12]}  {e.get('file')}"
        )
    if not entries:
        print("  (none installed; --model auto uses the embedded default)")
    return 0


COMMANDS = (
    Command(
        "weights",
        help="third-party weights TAGS can use (SAM, CLIP): list, download, verify",
        description="Downloads happen only here, on request; size, licence and SHA-256 are shown and verified. "
        "Offline, it says what to place where.",
        run=run_weights,
        options=(
            option("action", choices=("list", "download", "verify")),
            option("name", nargs="?", help="sam-vit-b or clip-vit-l-14"),
            JSON,
        ),
    ),
    Command(
        "convert-checkpoint",
        help="convert the TAGS authors' .pth.tar into a tagseg .safetensors checkpoint",
        description="Reads tensors only (torch.load weights_only=True); a file that would need code to run is refused.",
        run=run_convert,
        options=(
            option("source", metavar="SRC.pth.tar"),
            option("output", metavar="OUT.safetensors"),
            option("--task", required=True, help="kits, lits or pancreas (sets window, statistics, organ)"),
            PRESET,
            option(
                "--object-word-mode",
                choices=("dataset-key", "organ"),
                default="dataset-key",
                help="CLIP object word the checkpoint was trained with (authors: the dataset key)",
            ),
        ),
    ),
    Command(
        "models",
        help="installed TAGS checkpoints (used by --model auto): list, install, remove",
        run=run_models,
        options=(
            option("action", choices=("list", "install", "remove")),
            option("target", nargs="?", metavar="FILE|SHA", help="checkpoint to install, or SHA/file to remove"),
            JSON,
        ),
    ),
)
