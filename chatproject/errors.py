"""What an error report shows: Django's filter, which hides settings named like secrets, also hides the
passwords inside URLs (DATABASE_URL, REDIS_URL, LLM_BASE_URL), whose names it would not catch."""

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@host -> scheme://user:********************@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)(?P<at>@)")


class ReporterFilter(SafeExceptionReporterFilter):
    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        # Exactly str: lazy settings (a CSP nonce, say) pass for strings and must not be evaluated here.
        if type(value) is str:
            return _URL_PASSWORD.sub(lambda m: m["head"] + self.cleansed_substitute + m["at"], value)
        return value
