"""The ``summary`` task every DAG ends with: wired after every task, never deciding the run's state."""

from __future__ import annotations

from dbops.tasks.summary import MAX_LINES, compose


def test_every_dag_ends_with_a_summary_after_all_its_tasks(dagbag):
    for dag_id, dag in dagbag.dags.items():
        final = dag.task_dict.get("summary")
        assert final is not None, f"{dag_id} has no summary task"
        assert final.trigger_rule == "all_done", (dag_id, final.trigger_rule)
        assert not final.downstream_task_ids, dag_id
        if dag_id not in ("dbops_restore_drill", "dbops_dr_drill"):  # theirs fail the run on a mismatch
            assert set(final.upstream_task_ids) == set(dag.task_ids) - {"summary"}, dag_id
            assert final.is_teardown, f"{dag_id}: a summary's success must not decide the run's state"


def test_the_nightly_backup_announces_new_backups_once_and_the_sync_waits_for_that_alone(dagbag):
    from dbops.dagkit import NEW_BACKUPS

    nightly = dagbag.dags["dbops_nightly_backup"]
    publish = nightly.task_dict["publish_backups"]
    assert [a.uri for a in publish.outlets] == [NEW_BACKUPS.uri] and publish.is_teardown
    assert {t for t in publish.upstream_task_ids} == {t for t in nightly.task_ids if t.startswith("retention_")}
    base = dagbag.dags["dbops_base_backup"]
    assert [a.uri for a in base.task_dict["publish_backups"].outlets] == ["x-dbops://backups"]
    sync = dagbag.dags["dbops_offsite_sync"]
    assert [a.uri for a in sync.timetable.asset_condition.objects] == ["x-dbops://backups"]


def test_a_summary_is_short_one_line_per_entry_and_names_what_failed():
    text = compose("dbops_x run r: 2 success", [("plan", "line\nwith a break"), ("backup", "x" * 1000)], ["a[1]"])
    lines = text.splitlines()
    assert lines[0] == "dbops_x run r: 2 success" and lines[1] == "plan: line with a break"
    assert len(lines[2]) <= 410 and lines[2].endswith("...") and lines[3] == "failed: a[1]"
    many = compose("h", [("t", str(i)) for i in range(100)], [])
    assert len(many.splitlines()) == MAX_LINES and many.splitlines()[-1].startswith("... and 77 more line(s)")
