"""Names that become folder names (runs of an experiment, exported models)."""

from __future__ import annotations

import re

from sglr_keras.errors import UserError

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_path_component(what: str, name) -> str:
    """``name`` if it is one plain path component: no separators, no '..', no
    leading dot (so it cannot point outside the folder it is joined to)."""
    if not isinstance(name, str) or not _COMPONENT.fullmatch(name) or ".." in name or len(name) > 128:
        raise UserError(f"{what} {name!r} must be one plain name (letters, digits, '.', '_', '-', '+'; no '/' or "
                        "'..'), since it becomes a folder name")
    return name
