"""Read the globals a pickle references from its opcodes, without unpickling anything (no code of it runs).

Used to vet checkpoints before a loader that unpickles them fully (``ultralytics``) and to name the global a
weights-only load refused.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
import zipfile
from pathlib import Path

_STRING_OPCODES = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NEUTRAL = frozenset({"PROTO", "FRAME"})  # neither push nor pop
_UNKNOWN = object()  # a stack value the walk does not follow (anything but a string)


def zip_pickles(path: str | Path) -> list[bytes]:
    """Every pickle a ``torch.save`` zip holds (each ``*.pkl`` member, duplicates of one name included); raises
    ``zipfile.BadZipFile`` (or ``OSError``) for a file that is not a zip."""
    with zipfile.ZipFile(path) as archive:
        return [archive.read(info) for info in archive.infolist() if info.filename.endswith(".pkl")]


def stream_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals one pickle references, in order, read from its opcodes without running it.

    ``STACK_GLOBAL`` takes its two names from the stack; they are followed through memo puts and gets, and a
    ``STACK_GLOBAL`` whose names are not two strings pushed just before (an obfuscated reference) is reported as
    ``?.?`` so that it is refused; extension-registry references (``EXT1/2/4``) likewise.
    """
    found: list[str] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # values pushed by the latest opcodes (memo puts do not push)
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(str(argument).replace(" ", "."))
            recent.append(_UNKNOWN)
        elif name == "STACK_GLOBAL":
            names = recent[-2:]
            ok = len(names) == 2 and all(isinstance(value, str) for value in names)
            found.append(f"{names[0]}.{names[1]}" if ok else "?.?")
            recent = [_UNKNOWN]
        elif name.startswith("EXT"):
            found.append(f"copyreg extension code {argument}")
            recent.append(_UNKNOWN)
        elif name in _STRING_OPCODES:
            recent.append(argument if isinstance(argument, str) else _UNKNOWN)
        elif name in _MEMO_PUTS:
            memo[len(memo) if name == "MEMOIZE" else int(argument)] = recent[-1] if recent else _UNKNOWN
        elif name in _MEMO_GETS:
            recent.append(memo.get(int(argument), _UNKNOWN))
        elif name in _NEUTRAL:
            continue
        else:
            recent.append(_UNKNOWN)
        del recent[:-2]
    return found


def python3_name(name: str) -> str:
    module, _, attribute = name.rpartition(".")
    if (module, attribute) in _compat_pickle.NAME_MAPPING:
        return ".".join(_compat_pickle.NAME_MAPPING[(module, attribute)])
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attribute}" if module else name




def file_globals(path: str | Path) -> list[str]:
    """Python 3 ``module.name`` of the globals of the pickles in ``path`` (a torch zip, else the file's first
    pickle), first reference first, no repeats; raises ``ValueError`` and others on data that is no pickle."""
    try:
        streams = zip_pickles(path)
    except zipfile.BadZipFile:
        streams = [Path(path).read_bytes()]
    found: dict[str, None] = {}
    for data in streams:
        found.update(dict.fromkeys(python3_name(name) for name in stream_globals(data)))
    return list(found)
