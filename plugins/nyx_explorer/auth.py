"""Authentication and authorization for the explorer: Airflow's own.

`get_user` (airflow.api_fastapi.core_api.security, the dependency behind every core API route)
reads the JWT from an `Authorization: Bearer` header or, failing that, from the `_token` cookie
that the login sets for the UI. An external view is an iframe on the same origin, so the browser
sends that cookie with every page and image request. No token: 401; a bad token: 403; an expired
one: 401. Then the auth manager decides, as for any plugin view, with
`is_authorized_custom_view(GET, "NyxQA Explorer")` (the simple auth manager lets any role in).

A browser that opens a page with no token is sent to the auth manager's login page, which comes
back here afterwards; everything else (images, plots, API clients) gets the 401.
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse

RESOURCE_NAME = "NyxQA Explorer"


def require_explorer_access(user: Annotated[BaseUser, Depends(get_user)]) -> BaseUser:
    from airflow.api_fastapi.app import get_auth_manager

    if not get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    return user


async def login_redirect(request: Request, exc: HTTPException):
    """401 on a page a browser asked for: redirect to the login page (next = this page)."""
    wants_html = "text/html" in request.headers.get("accept", "")
    if exc.status_code == status.HTTP_401_UNAUTHORIZED and request.method == "GET" and wants_html:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    return await http_exception_handler(request, exc)
