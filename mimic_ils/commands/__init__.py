"""Subcommands of the ``mimic-ils`` console script.

Each module here defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and sets ``func=`` (a callable taking
the parsed ``argparse.Namespace`` and returning an exit code) through ``parser.set_defaults``. Modules keep their
top-level imports light; heavy imports (torch, datasets) happen inside the command function so that
``mimic-ils --help`` stays fast. A command first checks the local paths it is given (:func:`require_path`), so a
mistyped path is one line naming it, never a traceback or a hub look-up.
"""

from __future__ import annotations

from pathlib import Path

_KINDS = {"folder": Path.is_dir, "file": Path.is_file, "path": Path.exists}


def require_path(value: str | None, option: str, kind: str = "folder") -> None:
    """Refuse, in one line naming ``option`` and ``value``, a local path that is missing or not a ``kind`` (folder,
    file, or path: either), before anything is loaded (no hub look-up of a mistyped path). None passes."""
    from mimic_ils.schema import MimicIlsError

    if value is None:
        return
    path = Path(value).expanduser()
    if _KINDS[kind](path):
        return
    if path.exists() or path.is_symlink():
        raise MimicIlsError(f"{option} {value}: not a {kind}")
    raise MimicIlsError(f"{option} {value}: no such {'file or folder' if kind == 'path' else kind}")
