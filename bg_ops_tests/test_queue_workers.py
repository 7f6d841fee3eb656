"""Queue workers launch only when work is due, and never beside a run of themselves."""

from datetime import UTC, datetime

import dagster as dg

from bg_ops.defs.queue_workers import worker_run_request

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _context(instance):
    return dg.build_sensor_context(instance=instance)


def test_requests_a_run_only_when_work_is_due():
    with dg.instance_for_test() as instance:
        assert isinstance(worker_run_request(_context(instance), job_name="send_due_emails_job",
                                             count_due=lambda: 0, now=NOW, what="mail"), dg.SkipReason)
        request = worker_run_request(_context(instance), job_name="send_due_emails_job", count_due=lambda: 7,
                                     now=NOW, what="mail")
        assert isinstance(request, dg.RunRequest)
        assert request.run_key == "send_due_emails_job-20261123T090000" and request.tags["due_at_request"] == "7"


def test_skips_while_a_run_of_the_same_job_is_going():
    from bg_ops.defs.email.defs import send_due_emails_job

    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(send_due_emails_job, run_config={})
        asked = []
        result = worker_run_request(_context(instance), job_name="send_due_emails_job",
                                    count_due=lambda: asked.append(1) or 5, now=NOW, what="mail")
        assert isinstance(result, dg.SkipReason) and run.run_id[:8] in result.skip_message
        assert asked == []  # the database is not even asked while a run is going
        # Another job's run does not block this one.
        other = worker_run_request(_context(instance), job_name="upload_files_job", count_due=lambda: 1,
                                   now=NOW, what="upload")
        assert isinstance(other, dg.RunRequest)
