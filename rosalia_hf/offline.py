"""No network at run time unless the user opts in: every command line (``mimic-ils``, ``rosalia_hf.convert_lisa``,
``rosalia_hf.convert_sam``, the evaluation script) calls :func:`go_offline` before it loads a model or a dataset.

:func:`go_offline` sets ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``HF_EVALUATE_OFFLINE``,
``HF_HUB_DISABLE_TELEMETRY`` and ultralytics' ``YOLO_OFFLINE`` (no online check, no hub or sentry calls) and
``YOLO_AUTOINSTALL=False`` (no pip install of a missing requirement) in the process environment. These libraries read
their flags once, when imported; a library that is already imported (``python -m rosalia_hf.convert_lisa`` imports
``transformers`` through the package) has its module-level flag set too. The user opts in with ``--allow-downloads``
or ``MIMIC_ILS_ALLOW_DOWNLOADS=1``.

:func:`require_local` turns a value that is not a local path (a hub id such as ``openai/clip-vit-large-patch14``) into
one clear line instead of a network look-up and a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rosalia_hf.errors import NotLocalError

ALLOW_ENV = "MIMIC_ILS_ALLOW_DOWNLOADS"
ALLOW_FLAG = "--allow-downloads"
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "False",
}
_TRUE = ("1", "true", "yes", "on")
# (module, attribute, value) flags that the libraries compute at import time from the variables above
_IMPORTED_FLAGS = (
    ("huggingface_hub.constants", "HF_HUB_OFFLINE", True),
    ("datasets.config", "HF_HUB_OFFLINE", True),
    ("datasets.config", "HF_DATASETS_OFFLINE", True),
    ("evaluate.config", "HF_EVALUATE_OFFLINE", True),
    ("ultralytics.utils", "ONLINE", False),
    ("ultralytics.utils", "AUTOINSTALL", False),
    ("ultralytics.utils.checks", "AUTOINSTALL", False),
    ("ultralytics.utils.checks", "ONLINE", False),
    ("ultralytics.utils.events", "ONLINE", False),
)


def downloads_allowed(flag: bool = False) -> bool:
    """True when the user opted in: ``--allow-downloads`` (``flag``) or ``MIMIC_ILS_ALLOW_DOWNLOADS=1``."""
    return bool(flag) or os.environ.get(ALLOW_ENV, "").strip().lower() in _TRUE


def go_offline(allow_downloads: bool = False) -> bool:
    """Turn off every hub and ultralytics network access of this process unless downloads are allowed.

    Returns True when the process is now offline, False when the user opted in (nothing is changed then)."""
    if downloads_allowed(allow_downloads):
        return False
    os.environ.update(OFFLINE_ENVIRONMENT)
    for module_name, attribute, value in _IMPORTED_FLAGS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            setattr(module, attribute, value)
    events = getattr(sys.modules.get("ultralytics.utils.events"), "events", None)
    if events is not None and hasattr(events, "enabled"):
        events.enabled = False  # ultralytics' usage events, decided when it was imported
    return True


def add_download_flag(parser: argparse.ArgumentParser, *, suppress_default: bool = False) -> argparse.ArgumentParser:
    """Adds ``--allow-downloads`` (``suppress_default``: no default, for a subcommand beside a top-level flag)."""
    extra = {"default": argparse.SUPPRESS} if suppress_default else {}
    parser.add_argument(ALLOW_FLAG, action="store_true", dest="allow_downloads",
                        help=f"let the hub libraries download (default: offline; or set {ALLOW_ENV}=1)", **extra)
    return parser


def require_local(value: str | os.PathLike | None, option: str, *, kind: str = "folder", downloads: bool = False,
                  fetchable: bool = True) -> None:
    """Raise :class:`NotLocalError` (one line naming ``option`` and ``value``) unless ``value`` is an existing local
    path; ``kind`` is ``"folder"``, ``"file"`` or ``"path"`` (either). With ``downloads`` (the user opted in), a value
    that is not a local path is let through for the library to fetch, when the option can be fetched
    (``fetchable``), unless it can only be a path (:func:`looks_like_path`: a typo in a local path must not
    spend a minute retrying the Hub). None (an option not given) passes."""
    if value is None:
        return
    path = Path(value).expanduser()
    if {"folder": path.is_dir, "file": path.is_file, "path": path.exists}[kind]():
        return
    if path.exists():
        raise NotLocalError(f"{option} {value}: not a {kind}")
    if looks_like_path(value):  # a hub id is "name" or "owner/name": this one can only be a local path
        raise NotLocalError(f"{option} {value}: no such {kind}")
    if downloads and fetchable:
        return
    raise NotLocalError(f"{option} {value}: not a local {kind} ({local_hint(downloads)})")


def looks_like_path(value: str | os.PathLike) -> bool:
    """True for what cannot be a hub id (``name`` or ``owner/name``): absolute, ``~``, ``./``, ``../`` and
    Windows paths, and anything with more than one ``/``."""
    text = os.fspath(value)
    return (os.path.isabs(text) or text.startswith(("~", ".")) or "\\" in text or text.count("/") > 1
            or ".." in text)


def local_hint(downloads: bool = False) -> str:
    """What to do about a value that is not a local path (the parenthesis of :func:`require_local`'s line)."""
    return "give the path of a local copy" if downloads else "downloads are off; give the path of a local copy"
