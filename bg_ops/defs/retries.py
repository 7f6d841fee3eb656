"""The one retry policy of bg_ops (O2), for every op that talks to SMTP, Dropbox or the database.

A retry re-runs the whole op, so those ops are idempotent (leases, idempotency keys, upserts).
Errors a retry cannot fix (a bad template, bad config, an inactive tenant) raise
``dg.Failure(..., allow_retries=False)`` and fail at once. Where else failures are retried
(the run, each queued row) is in docs/operations.md, "Which failures are retried where".
"""

import dagster as dg

# 3 retries after about 10 s, 20 s and 40 s, each +/- a random part so that many ops failing
# together (the database restarting) do not come back at the same instant.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
