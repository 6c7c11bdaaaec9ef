"""Form fields shared by the admin and the dashboard's pages for rules and segments: JSON in a textarea, and
user ids typed one per line or comma-separated. Their values go to flags.services, which judge them."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from . import services


class JSONTextField(forms.JSONField):
    """JSON in a textarea, pretty-printed; empty means an empty list; a syntax error says where."""

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return []
        if isinstance(value, list | dict | int | float):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                                  code="invalid") from None

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, InvalidJSONInput):
            return value
        if value is None:  # no initial value: an empty textarea, not "null"
            return ""
        return json.dumps(value, indent=2, ensure_ascii=False)


class UserIdsField(forms.Field):
    """User ids, one per line or comma-separated (CSV: quote an id that holds a comma); blank entries and
    repeats are skipped. The ids are checked by flags.services' own reader (parse_user_id_list)."""

    widget = forms.Textarea(attrs={"rows": 6, "cols": 60})

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return value
        text = "" if value in self.empty_values else str(value)
        try:
            cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
        except csv.Error as exc:
            raise ValidationError(f"Not readable as CSV: {exc}.", code="invalid") from None
        parsed = services.parse_user_id_list(cells)
        if parsed.invalid:
            shown = "; ".join(f"{bad!r} (entry {number}): {message}" for number, bad, message in parsed.invalid[:5])
            more = f" (and {len(parsed.invalid) - 5} more)" if len(parsed.invalid) > 5 else ""
            raise ValidationError(f"{len(parsed.invalid)} invalid user id(s): {shown}{more}.", code="invalid")
        return [user_id for _number, user_id in parsed.ids]

    def prepare_value(self, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")  # quotes an id with a comma, a quote or a line break
        for user_id in value:
            writer.writerow([user_id])
        return out.getvalue()


def show_refusal(form: forms.BaseForm, refusal: ValidationError) -> None:
    """Each of a service's messages on the form field it names ("conditions[0].values" goes on conditions, with
    its path); a message for no visible field goes on top of the form."""
    if not hasattr(refusal, "error_dict"):
        form.add_error(None, refusal.messages)
        return
    for key, texts in refusal.message_dict.items():
        name = re.split(r"[.\[]", key, maxsplit=1)[0]
        field = form.fields.get(name)
        if field is not None and not field.widget.is_hidden:
            form.add_error(name, [text if key == name else f"{key}: {text}" for text in texts])
        else:
            form.add_error(None, [text if key == "__all__" else f"{key}: {text}" for text in texts])
