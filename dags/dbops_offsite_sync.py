"""
### dbops_offsite_sync: complete backups offsite by rsync over SSH and to S3, verified

Replaces `rsync -avz --delete /backup/DATE host:/mnt/backup` and `find ... | xargs rm -rf`.
Runs once per run of `dbops_nightly_backup` or `dbops_base_backup` that made new backups (their
task `publish_backups` updates the Asset `x-dbops://backups` once, whatever the number of stores;
a rerun that made nothing new does not), and by hand. Each sync ships every store's missing backups.

| task | what it does |
|---|---|
| `plan` | refuses bad Params, an unsafe backup root, a missing connection or encryption key before any transfer |
| `ship_rsync` | every complete, verified local backup not offsite yet goes to `dbops_offsite_ssh` (`offsite.rsync_remote_dir`): key in a 0600 temp file removed afterwards, host key pinned from the connection (`StrictHostKeyChecking=yes`), `rsync --partial-dir` into `<series>/.staging/<id>/`, remote `sha256sum` against the manifest, then one `mv` into place |
| `ship_s3` | the same to `dbops_s3` (`offsite.s3_bucket`/`s3_prefix`): multipart uploads (`TransferConfig`), every object uploaded with an S3 SHA256 checksum and checked by it on arrival, objects already there with the same size and checksum skipped, storage class, SSE and Object Lock from config, `manifest.json` uploaded last |
| `verify_<target>` | the target's listing against every manifest: every backup expected is complete, every stored file has its size, nothing extra; encrypted copies: the manifest's MAC (`manifest_mac` in `offsite.json`, HMAC-SHA256 under a key derived from the encryption key), a missing or wrong one is a problem (a copy under another key, or made before MACs, is logged as not authenticated). This run's arrivals (all with `deep_verify`) checked by content: rsync by `sha256sum` on the host; S3 by its own SHA256 checksums (`head_object`, the composite for multipart objects against `s3-checksums.json`), never by metadata dbops wrote; an object without one is re-read and hashed. With `deep_verify` S3 objects are all re-read, and with the key every encrypted file is decrypted under its own context. Fails, listing every problem, on any mismatch |
| `ship_wal_<target>`, `verify_wal_<target>` | the sealed WAL of point-in-time recovery (`postgres_wal/`): every sealed file not offsite yet, re-hashed locally first, checked on arrival (rsync: remote sha256sum; S3: size and its SHA256 checksum), the offsite catalog written last; verify: the offsite catalog against the local one, every file's size (content with `deep_verify`), no gap in the chain from the oldest base backup offsite. `dbops_wal_check` ships every 15 minutes too |
| `retention_<target>` | the local policy on the offsite copy (`offsite.retention_days`, the tiers `offsite.keep_weekly` / `keep_monthly`: the newest verified backup of each recent week / month, none for the PITR base backups; `min_keep` verified backups), only for series whose newest local backup is complete offsite; never deletes a pinned backup (its local `pin` sidecar or the target's `pins.json`, see `dbops_pin`; an unreadable `pins.json` deletes nothing there) nor one missing locally while it is inside the window; removes incomplete uploads nothing will resume. Runs in the one-slot pool `dbops_offsite_wal`, as pin changes do |
| `retention_wal_<target>` | only the offsite WAL before the oldest unpinned base backup still offsite (the chain rule of `dbops_base_backup`; a pinned one keeps its own WAL, start to stop); nothing when no base backup is offsite. Ships and expiries of WAL share the one-slot pool `dbops_offsite_wal` |

Staging folders, backups without a valid manifest and backups whose latest verify or drill
failed are never shipped; a backup offsite retention would delete at once (outside the
window and the tiers) is not shipped only to be expired. With `offsite.encryption` every
file is encrypted (AES-256-GCM in chunks, bound to its backup and path) before it leaves
the host, and `offsite.json` carries the manifest's MAC; `dbops.offsite.restore.fetch_backup`
brings an offsite backup back, decrypted and verified, for `dbops_restore`.
Each task reports bytes moved (rsync `--stats`): a sync with nothing new moves only the
catalog (the manifests, a few KiB).

**Params**: `targets`, `stores`, `retention_days`, `min_keep`, `dry_run` (log what would
be shipped and deleted; transfer and delete nothing), `retention_dry_run` (ship and verify,
only log what retention would delete), `deep_verify` (sha256 of every offsite backup).

**Rerun**: clearing a failed task converges. An interrupted copy resumes: rsync from its
partial files in the remote staging folder, S3 by skipping the objects already uploaded;
nothing is visible offsite until its arrival check passed. Backups already offsite are
never sent again or overwritten.

**Backfill**: a sync has no past to catch up. A backfilled or old rerun ships what is
complete in the repository *now* and applies retention by today's date; it never
re-creates a backup that retention removed.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, NEW_BACKUPS, dbops_dag, dry_run_param
from dbops.tasks.offsite import TARGETS, plan, retention_task, ship_task, verify_task
from dbops.tasks.offsite_wal import OFFSITE_STORES, retention_wal_task, ship_wal_task, verify_wal_task
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_offsite_sync",
    # one event per backup run that made something new (see publish_backups)
    schedule=[NEW_BACKUPS],
    doc_md=__doc__,
    tags=["backup", "offsite"],
    params={
        "targets": Param(
            list(CONFIG.offsite.targets),
            type="array",
            items={"type": "string", "enum": TARGETS},
            uniqueItems=True,
            minItems=1,
            title="Targets",
            description="Where to ship.",
        ),
        "stores": Param(
            list(OFFSITE_STORES),
            type="array",
            items={"type": "string", "enum": OFFSITE_STORES},
            uniqueItems=True,
            minItems=1,
            title="Stores",
            description="Stores whose backups are shipped, verified and expired "
            "(postgres_pitr: the base backups of point-in-time recovery, and their WAL).",
        ),
        "retention_days": Param(
            CONFIG.offsite.retention_days,
            type="integer",
            minimum=1,
            maximum=3650,
            title="Offsite retention (days)",
            description="Keep offsite backups younger than this.",
        ),
        "min_keep": Param(
            CONFIG.offsite.min_keep,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Min keep",
            description="Always keep at least this many verified offsite backups per series.",
        ),
        "dry_run": dry_run_param("Log what would be shipped and deleted; transfer and delete nothing."),
        "retention_dry_run": Param(
            False,
            type="boolean",
            title="Retention dry run",
            description="Ship and verify, but only log what retention would delete.",
        ),
        "deep_verify": Param(
            CONFIG.offsite.deep_verify,
            type="boolean",
            title="Deep verify",
            description="Check every offsite backup by sha256, not only this run's arrivals.",
        ),
    },
):
    planned = plan()
    for target in TARGETS:
        shipped = ship_task(target)()
        planned >> shipped
        retention_task(target)(verify_task(target)(shipped))
        wal_shipped = ship_wal_task(target)()
        planned >> wal_shipped
        retention_wal_task(target)(verify_wal_task(target)(wal_shipped))
    summary()
