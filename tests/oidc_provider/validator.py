from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator


class Validator(OAuth2Validator):  # type: ignore[misc]
    """The claims a company's identity provider gives: who, their name and their (verified) address."""

    oidc_claim_scope = None  # every claim below, whatever the scopes asked

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {
            "preferred_username": user.username,
            "name": f"{user.first_name} {user.last_name}".strip() or user.username,
            "email": user.email,
            "email_verified": True,
        }
