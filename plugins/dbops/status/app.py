"""The DB Ops page: a FastAPI app the Airflow plugin ``dbops_ops_page`` mounts at ``/dbops``.

``GET /`` is the page (``include/ui/``: HTML, CSS and a small script that draws
everything from the JSON API, the chart as inline SVG; nothing from a CDN).
``GET /api/overview``, ``/api/table-sizes``, ``/api/offsite``, ``/api/pitr`` and ``/api/recovery``
(the recovery-point status per store at the top) are the JSON it shows.

Read-only: the backup repository is only listed, retention is evaluated and not applied,
the Postgres session is read-only. Each part is computed on its own: an unreadable store
or an unreachable database shows its error in that part, never a 500 for the page.

Every route needs the Airflow login (the JWT cookie the UI sets, or a Bearer token),
checked by Airflow's own ``get_user`` dependency; the page redirects to the login.
"""

from __future__ import annotations

import logging
import threading
import time
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


# Offsite catalogs, read by /api/offsite and reused by /api/recovery for this long: a
# catalog costs S3 or SSH round trips, the recovery status is asked on every page load.
CATALOG_CACHE_S = 300.0
_catalog_cache: dict[tuple[str, str], tuple[float, Any]] = {}
_catalog_lock = threading.Lock()


def _catalogs(config, max_age_s: float) -> dict[str, Any]:
    """``{target: Catalog or error message}`` of every configured target; a catalog read
    less than ``max_age_s`` ago (for the same target settings) is reused."""
    from dbops import runtime

    settings = config.offsite.model_dump_json()
    found: dict[str, Any] = {}

    def not_cached(name: str, conn_id: str) -> bool:
        cached = _catalog_cache.get((name, f"{conn_id}|{settings}"))
        if cached is not None and time.monotonic() - cached[0] <= max_age_s:
            found[name] = cached[1]
            return False
        return True

    read = runtime.read_catalogs(config, lambda _msg: None, only=not_cached)
    with _catalog_lock:
        for name, catalog in read.items():
            key = (name, f"{runtime.target_connection_id(config, name)}|{settings}")
            _catalog_cache[key] = (time.monotonic(), catalog)
    return {name: found[name] if name in found else read[name] for name in config.offsite.targets}


def _with_postgres(config, read):
    """``read(conn)`` over a read-only session of the dbops Postgres connection."""
    from dbops import runtime
    from dbops.status import queries

    with runtime.postgres(config.connections.postgres) as conn:
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
        policy = RetentionPolicy.of(config.backup)
        try:
            repo = _repository(config)
            result = overview.backups_overview(repo, _shown_stores(config, repo), policy, utc_now())
            result["backup_error"] = None
        except (OSError, ValueError, RuntimeError) as exc:
            result = {
                "stores": [],
                "backup_root": str(config.backup.root),
                "backup_error": _error(exc),
                "retention_policy": {"retention_days": policy.retention_days, "min_keep": policy.min_keep},
            }
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
        from dbops.backup.repository import utc_now
        from dbops.backup.retention import RetentionPolicy
        from dbops.status import overview

        config = _config()
        repo = _repository(config)
        policy = RetentionPolicy.of(config.backup)
        local = overview.backups_overview(repo, _shown_stores(config, repo), policy, utc_now())
        catalogs: dict[str, dict[str, str] | str] = {}
        for name, catalog in _catalogs(config, max_age_s=0).items():  # read now; refreshes the cache
            catalogs[name] = (
                catalog
                if isinstance(catalog, str)
                else {f"{o.key}/{o.backup_id}": o.manifest_sha256 for o in catalog.all()}
            )
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
        result = pitr.pitr_overview(
            repo, wal_root, utc_now(), enabled=config.pitr.enabled, max_lag_s=config.pitr.max_lag_s
        )
        return {**result, "error": None}

    @app.get("/api/recovery")
    def api_recovery(user: LoggedIn) -> dict[str, Any]:
        """The recovery-point status per store (green / late / failed with the reasons),
        judged now by the checks of dbops_recovery_check: the repository as it is, the
        nightly run from the DagRun table, the offsite catalogs from the page's cache; and
        when that DAG last judged. An unreadable repository fails every store."""
        from dbops import runtime
        from dbops.backup.recovery_point import newest_copies
        from dbops.backup.repository import utc_now
        from dbops.status import recovery_point

        config = _config()
        now = utc_now()
        try:
            repo = _repository(config)
        except (OSError, ValueError, RuntimeError) as exc:
            stores = [str(getattr(s, "value", s)) for s in config.backup.stores]
            reason = f"the backup repository cannot be read: {_error(exc)}"
            return {
                "status": "failed",
                "error": reason,
                "generated_at": None,
                "problems": [],
                "common": [],
                "stores": [{"store": s, "status": "failed", "reasons": [reason], "checks": []} for s in stores],
            }
        offsite = {
            name: held if isinstance(held, str) else newest_copies(held)
            for name, held in _catalogs(config, max_age_s=CATALOG_CACHE_S).items()
        }
        return recovery_point.recovery_overview(
            config,
            repo,
            now,
            offsite=offsite,
            nightly=recovery_point.nightly_from_db,
            connection_exists=runtime.connection_exists,
        )

    return app


app = create_app()
