"""Airflow plugin: the "DB Ops" page in the Airflow UI.

Mounts the read-only FastAPI app of :mod:`dbops.status.app` in the API server at
``/dbops`` (the page at ``/dbops/``, its JSON API at ``/dbops/api/...``) and adds a
"DB Ops" link to the UI's navigation, which shows the page inside the UI.

This file is the plugin (the plugin manager imports the top-level modules of the
plugins folder; ``.airflowignore`` keeps it out of the ``dbops`` package itself).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from dbops.status.app import app

URL_PREFIX = "/dbops"


class DbopsOpsPagePlugin(AirflowPlugin):
    name = "dbops_ops_page"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "DB Ops"}]
    external_views = [
        {
            "name": "DB Ops",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "dbops",
        }
    ]
