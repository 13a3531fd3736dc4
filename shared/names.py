"""Plain names: device and fleet ids (MQTT topic levels), pack names and versions (folder names).

1-64 letters, digits, '.', '_' or '-', starting with a letter or digit: no '/', '+', '#', spaces
or line breaks. Checked with a full match (a regex ``$`` would also match before a final newline).
"""

from __future__ import annotations

import re

NAME_REGEX = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# For pydantic's ``Field(pattern=...)``, whose regex engine ends ``$`` at the end of the text only.
NAME_PATTERN = f"^{NAME_REGEX}$"
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(NAME_REGEX)


def is_plain_name(value: str) -> bool:
    """True when ``value`` is a plain name as described above."""
    return _NAME.fullmatch(value) is not None
