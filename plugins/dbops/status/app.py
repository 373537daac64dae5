"""The DB Ops page: a FastAPI app the Airflow plugin ``dbops_ops_page`` mounts at ``/dbops``.

``GET /`` is the page (``include/ui/``: HTML, CSS and a small script that draws
everything from the JSON API, the chart as inline SVG; nothing from a CDN).
``GET /api/overview``, ``/api/table-sizes``, ``/api/offsite`` and ``/api/pitr`` are the JSON it
shows.

Read-only: the backup repository is only listed, retention is evaluated and not applied,
the Postgres session is read-only. Each part is computed on its own: an unreadable store
or an unreachable database shows its error in that part, never a 500 for the page.

Every route needs the Airflow login (the JWT cookie the UI sets, or a Bearer token),
checked by Airflow's own ``get_user`` dependency; the page redirects to the login.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from dbops.sqlfiles import INCLUDE_DIR

log = logging.getLogger(__name__)

UI_DIR = INCLUDE_DIR / "ui"
STATIC_FILES = {"dbops_status.js": "text/javascript", "dbops_status.css": "text/css"}


async def current_user(request: Request):
    """The logged-in Airflow user (401/403 otherwise), as Airflow's REST API checks it."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, oauth2_scheme

    return await get_user(request, await oauth2_scheme(request), await bearer_scheme(request))


LoggedIn = Annotated[Any, Depends(current_user)]


def _error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, LookupError) else f"{type(exc).__name__}: {text}"


def _config():
    from dbops.runtime import runtime_config

    return runtime_config()


def _repository(config):
    from dbops.backup.repository import BackupRepository

    return BackupRepository(config.backup.root, allowed_base=config.backup.allowed_base)


def _shown_stores(config, repo) -> list[str]:
    """The enabled stores, then any other store that has a folder in the repository."""
    from dbops.config import ALL_STORES

    enabled = [str(getattr(s, "value", s)) for s in config.backup.stores]
    on_disk = [s for s in ALL_STORES if s not in enabled and (repo.root / s).is_dir()]
    return enabled + on_disk


def _with_postgres(config, read):
    """``read(conn)`` over a read-only session of the dbops Postgres connection."""
    from dbops import connections
    from dbops.status import queries

    with connections.postgres(config.connections.postgres) as conn:
        queries.prepare_session(conn)
        return read(conn)


def create_app() -> FastAPI:
    app = FastAPI(
        title="DB Ops",
        description="Backups, retention, maintenance and table sizes of the dbops stores (read-only).",
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request):
        try:
            await current_user(request)
        except HTTPException:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        return HTMLResponse((UI_DIR / "dbops_status.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, user: LoggedIn):
        if name not in STATIC_FILES:
            raise HTTPException(status_code=404, detail=f"no such file {name!r}")
        return FileResponse(Path(UI_DIR / name), media_type=STATIC_FILES[name])

    @app.get("/api/overview")
    def api_overview(user: LoggedIn) -> dict[str, Any]:
        """Per store: every complete backup with size, verified flag, drill result and the
        retention verdict now; the last good backup; the latest maintenance report."""
        from dbops.backup.repository import utc_now
        from dbops.backup.retention import RetentionPolicy
        from dbops.status import overview, queries

        config = _config()
        policy = RetentionPolicy(config.backup.retention_days, config.backup.min_keep)
        try:
            repo = _repository(config)
            result = overview.backups_overview(repo, _shown_stores(config, repo), policy, utc_now())
            result["backup_error"] = None
        except (OSError, ValueError, RuntimeError) as exc:
            result = {"stores": [], "backup_root": str(config.backup.root), "backup_error": _error(exc),
                      "retention_policy": {"retention_days": policy.retention_days, "min_keep": policy.min_keep}}
        try:
            result["maintenance"] = _with_postgres(config, queries.latest_maintenance)
            result["maintenance_error"] = None
        except Exception as exc:  # the database's failure is shown in its part of the page
            log.warning("DB Ops page: maintenance report unavailable: %s", exc)
            result["maintenance"], result["maintenance_error"] = None, _error(exc)
        return result

    @app.get("/api/table-sizes")
    def api_table_sizes(
        user: LoggedIn,
        days: Annotated[int, Query(ge=1, le=400, description="history shown, in days")] = 30,
        top: Annotated[int, Query(ge=1, le=50, description="how many of the biggest tables")] = 8,
    ) -> dict[str, Any]:
        """Sizes of the biggest tables at every capture, and their growth per day."""
        from dbops.status import queries

        config = _config()
        try:
            chart = _with_postgres(config, lambda conn: queries.table_sizes(conn, config.monitor, days=days, top=top))
            return {**chart, "error": None}
        except Exception as exc:
            log.warning("DB Ops page: table sizes unavailable: %s", exc)
            return {"error": _error(exc), "tables": [], "captures": [], "days": days}

    @app.get("/api/offsite")
    def api_offsite(user: LoggedIn) -> dict[str, Any]:
        """Which offsite target holds which local backup (same id and manifest), read from
        each target's catalog; a target that cannot be read shows its error."""
        from dbops import connections
        from dbops.backup.repository import utc_now
        from dbops.backup.retention import RetentionPolicy
        from dbops.status import overview
        from dbops.offsite.targets import open_target, target_connection_id

        config = _config()
        repo = _repository(config)
        policy = RetentionPolicy(config.backup.retention_days, config.backup.min_keep)
        local = overview.backups_overview(repo, _shown_stores(config, repo), policy, utc_now())
        catalogs: dict[str, dict[str, str] | str] = {}
        for name in config.offsite.targets:
            conn_id = target_connection_id(config, name)
            if not connections.connection_exists(conn_id):
                catalogs[name] = f"no Airflow connection {conn_id!r}"
                continue
            try:
                with open_target(name, config) as target:
                    catalog = target.catalog(lambda _msg: None)
                catalogs[name] = {f"{o.key}/{o.backup_id}": o.manifest_sha256 for o in catalog.all()}
            except Exception as exc:
                log.warning("DB Ops page: offsite target %s unreadable: %s", name, exc)
                catalogs[name] = _error(exc)
        return overview.offsite_copies(local, catalogs)

    @app.get("/api/pitr")
    def api_pitr(user: LoggedIn) -> dict[str, Any]:
        """Point-in-time recovery: the recovery window and the receiver's lag as the last WAL
        check found them (with its age and problems), the receiver's heartbeat, and the base
        backups with their drills. Read from the files the PITR tasks write, never measured here."""
        from dbops.backup.repository import utc_now
        from dbops.pitr.wal import WAL_DIR
        from dbops.status import pitr

        config = _config()
        wal_root = config.backup.root / WAL_DIR
        try:
            repo = _repository(config)
        except (OSError, ValueError, RuntimeError) as exc:
            return {"enabled": config.pitr.enabled, "wal_root": str(wal_root), "error": _error(exc)}
        result = pitr.pitr_overview(repo, wal_root, utc_now(), enabled=config.pitr.enabled,
                                    max_lag_s=config.pitr.max_lag_s)
        return {**result, "error": None}

    return app


app = create_app()
