"""Offsite copies of the backup repository: rsync over SSH and S3, verified, with retention.

Pure Python (no Airflow import); ``dbops.tasks.offsite`` wires it into the DAG.

The offsite layout mirrors the local repository (``<store>/[<subject>/]<backup_id>/``) and
keeps its one rule: *a backup is complete offsite only when its manifest is there*.

* rsync (:mod:`.rsync`): each backup is copied into ``<series>/.staging/<backup_id>/``
  (``--partial-dir``, so an interrupted copy resumes), checked there with a remote
  ``sha256sum`` against the manifest, then renamed into place in one ``mv``: nothing
  complete-looking is ever half-written.
* S3 (:mod:`.s3`): data objects first (multipart, skipped when already present with the
  same size and sha256 metadata), then ``offsite.json``, then ``manifest.json`` last.

Beside the manifest each offsite backup holds ``offsite.json`` (the *envelope*): what
was stored for each file (size and sha256 of the bytes on the target, which differ from
the manifest's only when client-side encryption is on) and how it was encrypted.

The catalog of a target (:class:`.common.Catalog`) is read by mirroring the small files
(manifests and envelopes) into a temporary folder and listing it with the very same
:class:`~dbops.backup.repository.BackupRepository` code, so the offsite side has exactly
the local notion of "complete". Retention (:mod:`.retention`) reuses
:class:`~dbops.backup.retention.RetentionPolicy`; restore (:mod:`.restore`) brings a
backup back into a local repository, decrypting it, before the store's restore runs.
"""
