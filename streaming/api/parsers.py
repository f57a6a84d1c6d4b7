"""The API's JSON parser: DRF's, with the two ways a JSON body can still fail later turned into clear 400s.

A body nested thousands deep makes Python's parser raise RecursionError (a 500 with DRF's own parser); a body
with `\\u0000` or an unpaired surrogate parses, and then fails in the database (PostgreSQL) or when encoded.
"""

from typing import Any

from rest_framework import parsers

from conversations.errors import InvalidJson, InvalidRequest
from conversations.text import UnstorableText, check_document


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise InvalidJson("The request body is nested too deeply.") from None
        try:
            check_document(data)
        except UnstorableText as exc:
            raise InvalidRequest(str(exc)) from None
        return data
