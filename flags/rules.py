"""What a user id and a flag key may be: the one definition that every edge checks against.

Pure (no Django import), so the lean evaluation path (api/hot.py) can use it without loading the ORM.
The models take their limits and validators from here; the admin, the services, the CLI, the evaluation
APIs and ingestion call these functions and only choose how to word the answer for their audience.
"""

from __future__ import annotations

import re

# --- user ids -----------------------------------------------------------------------------------------

USER_ID_MAX_LENGTH = 255

# The problems, worded as the JSON API's field messages ("user_id": ["must not be blank"]).
NOT_A_STRING = "must be a string"
BLANK = "must not be blank"
TOO_LONG = f"must be at most {USER_ID_MAX_LENGTH} characters"
HAS_NUL = "must not contain NUL characters"
LONE_SURROGATE = "must not contain a lone UTF-16 surrogate (\\ud800-\\udfff)"

# The same problems as sentences with a ValidationError code (the model's validator, forms, the CLI).
USER_ID_SENTENCES = {
    NOT_A_STRING: ("A user id must be a string.", "invalid"),
    BLANK: ("A user id must not be blank.", "blank"),
    TOO_LONG: (f"A user id has at most {USER_ID_MAX_LENGTH} characters.", "max_length"),
    HAS_NUL: ("A user id must not contain NUL characters.", "invalid"),
    LONE_SURROGATE: ("A user id must not contain a lone UTF-16 surrogate.", "invalid"),
}


def user_id_problem(value: object) -> str | None:
    """None for a valid user id, else the first problem (one of the constants above).

    A user id is a string, not blank (whitespace only counts as blank), of at most USER_ID_MAX_LENGTH
    characters, with no NUL (PostgreSQL refuses it) and no lone surrogate (no UTF-8 text, database or
    hash can take it). On the evaluation hot path: the common ASCII id costs a few C-level checks.
    """
    if not isinstance(value, str):
        return NOT_A_STRING
    if not value.strip():
        return BLANK
    if len(value) > USER_ID_MAX_LENGTH:
        return TOO_LONG
    if "\x00" in value:
        return HAS_NUL
    if not value.isascii():  # isascii() is O(1) on a str: only non-ASCII ids pay for the encoding
        try:
            value.encode()
        except UnicodeEncodeError:
            return LONE_SURROGATE
    return None


# --- flag keys and modes --------------------------------------------------------------------------------

# A slug: lowercase letters, digits, underscores and hyphens, starting with a letter or digit. Flag keys and
# the monitoring modes (patch, single, ...) both follow it.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*\Z"
KEY_MAX_LENGTH = 100
MODE_MAX_LENGTH = 50
# A flag's salt (hashed with each user id): the model's column and every service check use this.
SALT_MAX_LENGTH = 100

_slug = re.compile(SLUG_PATTERN).match


def is_flag_key(value: object) -> bool:
    """A slug of at most KEY_MAX_LENGTH characters."""
    return isinstance(value, str) and len(value) <= KEY_MAX_LENGTH and _slug(value) is not None


def is_mode(value: object) -> bool:
    """A slug of at most MODE_MAX_LENGTH characters."""
    return isinstance(value, str) and len(value) <= MODE_MAX_LENGTH and _slug(value) is not None
