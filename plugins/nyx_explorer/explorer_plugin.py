"""The Airflow entry point of the NyxQA explorer: a FastAPI app mounted at /nyx on the API
server and a "NyxQA explorer" entry in the UI's nav that shows it in an iframe.

Airflow's plugin loader executes every `.py` file of the plugins folder as a top-level module;
`.airflowignore` beside this file keeps the rest of the package out, so this is the only one
loaded that way. Plugins are loaded in the scheduler, DAG processor and workers too, so this file
imports neither FastAPI nor pyarrow: the app is built on its first request (API server only).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/nyx"


class LazyExplorerApp:
    """An ASGI app that builds the explorer (`nyx_explorer.app.create_app`) on first use."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from nyx_explorer.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "nyx_explorer.app:create_app()"


class NyxExplorerPlugin(AirflowPlugin):
    name = "nyx_explorer"
    fastapi_apps = [{"app": LazyExplorerApp(), "url_prefix": URL_PREFIX, "name": "NyxQA explorer"}]
    external_views = [{
        "name": "NyxQA explorer",
        "href": URL_PREFIX.lstrip("/") + "/",  # relative: resolved against the UI's <base href> (base_url)
        "url_route": "nyx-explorer",  # the UI shows it at /plugin/nyx-explorer
        "destination": "nav",
        "nav_top_level": True,
    }]
