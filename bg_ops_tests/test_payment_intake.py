"""B5/O8 payment intake over real HTTP on loopback: signatures, limits, replays, concurrency, logs."""

import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import uvicorn

from bg_ops.db.app_schema import Invoice
from bg_ops.db.engine import session_scope
from bg_ops.defs.billing.payments import load_event, pending_events, process_payment_event
from bg_ops.defs.billing.signatures import signature_header, sign
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops_tests.support.payments import KIWI_FINANCE, events, invoice, queued, seed_world, stripe_event
from bg_ops_tests.support.postgres_server import free_port
from bg_ops_tests.support.waiting import OutputWatch

CURRENT = "whsec_current_7f3a9c1e55b24d08"
NEXT = "whsec_next_0b81d4e2a96c4f7d"
PAYER = "payer.private@example.com"  # personal data inside the body: never in a log line


def body_of(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def signed(payload: dict, secret: str = CURRENT, *, age: int = 0) -> tuple[bytes, dict]:
    body = body_of(payload)
    return body, {"Payment-Signature": signature_header(secret, int(time.time()) - age, body),
                  "Content-Type": "application/json"}


class Client:
    """A plain HTTP client for the intake on a loopback port (one connection per request)."""

    def __init__(self, port: int):
        self.port = port

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {})
        finally:
            conn.close()

    def post(self, body, headers=None, provider: str = "stripe") -> tuple[int, dict]:
        return self.request("POST", f"/payments/{provider}", body, headers)


class _Server(uvicorn.Server):
    """uvicorn's server telling a waiting thread when its start-up has ended, either way."""

    def __init__(self, config):
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None):
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


class Intake(Client):
    """The intake app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, db_url: str, max_body_bytes: int = 1024 * 1024):
        from bg_ops.defs.billing.intake import create_app

        super().__init__(free_port())
        app = create_app(database_url=db_url, secrets=(CURRENT, NEXT), max_body_bytes=max_body_bytes)
        self.server = _Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                             access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        if not self.server.ready.wait(timeout=20) or not self.server.started:
            raise RuntimeError(f"the intake server did not start on port {self.port}")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def mail_settings(tmp_path):
    root = tmp_path / "files"
    root.mkdir(exist_ok=True)
    return MailSettings(mail_from="bg_ops <no-reply@bg-ops.example>", files_root=root)


def process_all(engine, mail_settings) -> list:
    """What the sensor and its runs do, without Dagster: every pending event once."""
    outcomes, after = [], 0
    while True:
        with session_scope(engine) as s:
            batch = pending_events(s, after_id=after, limit=200)
        if not batch:
            return outcomes
        for pending in batch:
            with session_scope(engine) as s:
                outcomes.append(process_payment_event(s, load_event(s, pending.event_id), now=_now(),
                                                      mail_settings=mail_settings))
        after = batch[-1].id


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_signature_rules():
    from bg_ops.defs.billing.signatures import SignatureError, verify

    body, t = b'{"id":"evt_1"}', 1_800_000_000
    assert verify(signature_header(CURRENT, t, body), body, (CURRENT, NEXT), now=t) == 0
    assert verify(signature_header(NEXT, t, body), body, (CURRENT, NEXT), now=t + 299) == 1
    # Upper-case hex is the same signature; schemes other than v1 are ignored.
    upper = f"t={t},v1={sign(CURRENT, t, body).upper()},v0=ignored"
    assert verify(upper, body, (CURRENT, None), now=t) == 0

    def reason(header, *, now=t, secrets=(CURRENT, NEXT)):
        with pytest.raises(SignatureError) as err:
            verify(header, body, secrets, now=now)
        return err.value.reason, err.value.status

    assert reason(None) == ("missing signature header", 400)
    assert reason("   ") == ("missing signature header", 400)
    for bad in ("t=abc,v1=" + "0" * 64, f"t={t}", f"v1={sign(CURRENT, t, body)}", f"t={t},v1=xyz",
                f"t={t},t={t},v1={sign(CURRENT, t, body)}", "garbage", f"t={t}," + ",".join(["v1=" + "0" * 64] * 9)):
        assert reason(bad) == ("malformed signature header", 400), bad
    assert reason(signature_header("whsec_other", t, body)) == ("bad signature", 401)
    assert reason(signature_header(CURRENT, t, body), secrets=(None, None)) == ("bad signature", 401)
    # Authentic but outside the five minutes, either way: stale. A forgery that is also old: bad signature.
    assert reason(signature_header(CURRENT, t, body), now=t + 301) == ("stale timestamp", 401)
    assert reason(signature_header(CURRENT, t, body), now=t - 301) == ("stale timestamp", 401)
    assert reason(signature_header("whsec_other", t, body), now=t + 3600) == ("bad signature", 401)


def test_events_signed_with_the_current_or_the_next_secret_are_stored(db_engine, db_url):
    first = stripe_event("evt_current", "INV-2026-0001")
    second = stripe_event("evt_next", "INV-2026-0002")
    with Intake(db_url) as intake:
        assert intake.request("GET", "/health") == (200, {"status": "ok"})
        assert intake.post(*signed(first, CURRENT)) == (202, {"status": "accepted", "event_id": "evt_current"})
        assert intake.post(*signed(second, NEXT))[0] == 202
        # A provider rolling its own key sends two signatures: one matching is enough.
        both = stripe_event("evt_both", "INV-2026-0003")
        body = body_of(both)
        t = int(time.time())
        header = f"t={t},v1={sign('whsec_retired', t, body)},v1={sign(NEXT, t, body)}"
        assert intake.post(body, {"Payment-Signature": header})[0] == 202
    rows = events(db_engine)
    assert [(r.event_id, r.provider, r.signature_valid, r.processed_at, r.error) for r in rows] == [
        ("evt_current", "stripe", True, None, None), ("evt_next", "stripe", True, None, None),
        ("evt_both", "stripe", True, None, None)]
    assert rows[0].payload == first and rows[1].payload == second


def test_forged_stale_unsigned_oversized_and_malformed_requests_are_rejected(db_engine, db_url, caplog):
    caplog.set_level(logging.INFO)
    payload = stripe_event("evt_real", "INV-2026-0001")
    payload["data"]["object"]["customer_email"] = PAYER
    body, good = signed(payload)
    signature = good["Payment-Signature"]
    huge = b'{"id":"evt_huge","pad":"' + b"x" * (5 * 1024 * 1024) + b'"}'
    with Intake(db_url) as intake:
        wrong_secret = intake.post(*signed(payload, "whsec_not_ours"))
        changed_body = intake.post(body.replace(b"INV-2026-0001", b"INV-2026-0002"), good)
        stale = intake.post(*signed(payload, age=600))
        missing = intake.post(body, {"Content-Type": "application/json"})
        malformed = intake.post(body, {"Payment-Signature": "v1=deadbeef"})
        too_big = intake.post(huge, {"Payment-Signature": signature})
        # Without a Content-Length (chunked), the stream is cut at the limit as well.
        too_big_chunked = intake.post(iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]),
                                      {"Payment-Signature": signature})
        not_json = intake.post(*signed_raw(b"not json"))
        no_id = intake.post(*signed_raw(body_of({"type": "invoice.paid"})))
        bad_provider = intake.post(body, good, provider="Stripe!")
        wrong_method = intake.request("GET", "/payments/stripe")
        assert [r[0] for r in (wrong_secret, changed_body, stale, missing, malformed, too_big, too_big_chunked,
                               not_json, no_id, bad_provider)] == [401, 401, 401, 400, 400, 413, 413, 400, 400, 404]
        assert wrong_method[0] == 405
        assert [r[1]["error"] for r in (wrong_secret, changed_body, stale, missing, malformed, too_big)] == [
            "bad signature", "bad signature", "stale timestamp", "missing signature header",
            "malformed signature header", "body too large"]
        # The forgeries never took the event's id: the real event still gets in.
        assert intake.post(body, good)[0] == 202

    rows = events(db_engine)
    valid = [r for r in rows if r.signature_valid]
    assert [r.event_id for r in valid] == ["evt_real"] and valid[0].payload == payload
    rejected = [r for r in rows if not r.signature_valid]
    # Every well-formed attempt that failed authentication is kept, closed, under an id nobody can claim.
    assert sorted(r.error for r in rejected) == sorted([
        "rejected: bad signature", "rejected: bad signature", "rejected: stale timestamp",
        "rejected: missing signature header", "rejected: malformed signature header"])
    assert all(r.event_id.startswith("rejected:") and r.processed_at is not None for r in rejected)
    assert not any(r.payload.get("id") == "evt_huge" for r in rows)

    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert text.count("payment intake rejected a request") == 10
    assert "reason=stale timestamp" in text and "status=413" in text
    for secret_or_data in (CURRENT, NEXT, "whsec_not_ours", signature, signature.split("v1=")[1], PAYER,
                           body.decode(), '"customer_email"', "xxxxxxxx"):
        assert secret_or_data not in text
    assert not [r for r in caplog.records if r.name.startswith("bg_ops") and "127.0.0.1" in r.getMessage()]
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]  # no access log (client addresses)


def signed_raw(body: bytes, secret: str = CURRENT) -> tuple[bytes, dict]:
    return body, {"Payment-Signature": signature_header(secret, int(time.time()), body)}


def test_the_same_event_sent_five_times_is_stored_once_and_pays_once(db_engine, db_url, mail_settings, tmp_path):
    from bg_ops.defs.billing import payments_defs
    from bg_ops.resources.database import DatabaseResource
    from bg_ops.resources.files import FilesResource
    from bg_ops.resources.mail import OutboxMailResource

    seed_world(db_engine)
    payload = stripe_event("evt_kiwi_paid", "INV-2026-0001", tenant="kiwi")
    with Intake(db_url) as intake:
        body, headers = signed(payload)
        answers = [intake.post(body, headers) for _ in range(3)]  # the very same request replayed
        answers += [intake.post(*signed(payload)) for _ in range(2)]  # the provider's retries, signed anew
    assert [a[0] for a in answers] == [202, 200, 200, 200, 200]
    assert {a[1]["status"] for a in answers[1:]} == {"duplicate"}
    assert [r.event_id for r in events(db_engine)] == ["evt_kiwi_paid"]

    resources = {"database": DatabaseResource(url=db_url), "files": FilesResource(root=str(mail_settings.files_root)),
                 "mail": OutboxMailResource(outbox_dir=str(tmp_path / "outbox"))}
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(3):  # the sensor evaluated three times, every requested run executed
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"database": resources["database"]})
            tick = payments_defs.payment_event_sensor(ctx)
            if isinstance(tick, dg.SkipReason):
                continue
            cursor = tick.cursor
            for request in tick.run_requests:
                assert request.run_key == "evt_kiwi_paid" and request.tags["bg_ops/tenant"] == "kiwi"
                result = payments_defs.process_payment_event_job.execute_in_process(
                    instance=instance, run_config=request.run_config, tags=request.tags, resources=resources)
                assert result.success
    assert invoice(db_engine, 5).status == "paid" and invoice(db_engine, 1).status == "sent"
    mails = queued(db_engine)
    assert [m.to_addrs for m in mails] == [KIWI_FINANCE]  # one finance mail
    assert events(db_engine)[0].processed_at is not None


def test_500_events_posted_concurrently_are_all_stored_and_each_processed_once(db_engine, db_url, mail_settings):
    seed_world(db_engine, extra_invoices=500)
    payloads = [stripe_event(f"evt_bulk_{i:04d}", f"INV-BULK-{i:04d}", tenant="kiwi") for i in range(500)]
    latencies: list[float] = []

    with Intake(db_url) as intake:
        def post(payload):
            body, headers = signed(payload)
            started = time.perf_counter()
            status, _ = intake.post(body, headers)
            latencies.append(time.perf_counter() - started)
            return status

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(post, payloads))
        with ThreadPoolExecutor(max_workers=16) as pool:  # the provider retries a sample
            again = list(pool.map(post, payloads[:50]))
    assert statuses == [202] * 500 and again == [200] * 50
    latencies.sort()
    print(f"intake latency over {len(latencies)} requests: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")

    rows = events(db_engine)
    assert sorted(r.event_id for r in rows) == sorted(p["id"] for p in payloads)

    outcomes = process_all(db_engine, mail_settings)
    assert sorted(o.event_id for o in outcomes) == sorted(p["id"] for p in payloads)
    assert {o.status for o in outcomes} == {"paid"}
    assert process_all(db_engine, mail_settings) == []  # nothing left: each processed once
    with db_engine.connect() as c:
        paid = c.execute(sa.select(sa.func.count()).where(Invoice.number.like("INV-BULK-%"),
                                                          Invoice.status == "paid")).scalar_one()
    assert paid == 500
    mails = queued(db_engine)
    assert len(mails) == 500 and len({m.idempotency_key for m in mails}) == 500


def test_bg_ops_intake_serve_runs_the_endpoint(tmp_path, capsys, monkeypatch):
    from bg_ops.cli.main import main
    from bg_ops.db import migrate
    from bg_ops.db.engine import get_engine

    db_url = f"sqlite:///{tmp_path / 'app.db'}"
    migrate.create_app_schema(get_engine(db_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BG_OPS_", "DROPBOX_"))}
    env.update(BG_OPS_DATABASE_URL=db_url, BG_OPS_PAYMENT_SIGNING_SECRET=CURRENT,
               BG_OPS_PAYMENT_SIGNING_SECRET_NEXT=NEXT, BG_OPS_INTAKE_MAX_BODY_BYTES="4096")

    # Without the signing secret it refuses to start: one line naming the variable, exit 2.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BG_OPS_DATABASE_URL", db_url)
    assert main(["intake", "serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: BG_OPS_PAYMENT_SIGNING_SECRET is not set") and len(err.strip().splitlines()) == 1

    port = free_port()
    bg_ops = Path(sys.executable).with_name("bg-ops")
    proc = subprocess.Popen([str(bg_ops), "intake", "serve", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = OutputWatch(proc.stderr, "bg-ops intake serve")
    try:
        # uvicorn says so once its socket listens (and the stream ends if the command exits).
        stderr.wait_for_line(r"Uvicorn running on", timeout=30, what="bg-ops intake serve to listen")
        client = Client(port)
        payload = stripe_event("evt_cli", "INV-1")
        payload["data"]["object"]["customer_email"] = PAYER
        assert client.post(*signed(payload, NEXT))[0] == 202
        assert client.post(*signed(payload, "whsec_forged"))[0] == 401
        assert client.post(b'{"id":"big","pad":"' + b"y" * 5000 + b'"}', {"Payment-Signature": "t=1,v1=" + "0" * 64})[0] == 413
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    logs = proc.stdout.read() + stderr.text()
    assert "payment event evt_cli (stripe) stored" in logs and "reason=bad signature" in logs
    for secret_or_data in (CURRENT, NEXT, "whsec_forged", PAYER, "127.0.0.1:"):
        assert secret_or_data not in logs.replace(f"http://127.0.0.1:{port}", "")
    assert [r.event_id for r in events(get_engine(db_url)) if r.signature_valid] == ["evt_cli"]
