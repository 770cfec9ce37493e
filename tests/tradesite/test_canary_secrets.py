"""Canary secrets: a full cycle on real processes at DEBUG log level, forced errors and 500s, then a search of the
logs, Redis keys and values, error pages and every API response for the canaries, raw and encoded.

The canaries are real credentials wherever the local services allow it: the Postgres password is in DATABASE_URL
(trust authentication accepts any), Redis is a private redis-server started with the canary as its password, the
Coinbase key is a real Ed25519 CDP key registered with the loopback Coinbase fake, the Hyperliquid key is a random API
(agent) wallet the Hyperliquid fake approved for a funded account, the Synthetix key is a random wallet that owns a
funded perps account on anvil (both sign real orders in the worker: EIP-712 actions, EIP-1559 transactions), the
webhook passphrases are a strategy's real secret and a wrong one, and SECRET_KEY and METRICS_TOKEN are the processes'
real ones. Every venue key is an environment credential of an account (<PREFIX>_<KEY>), as in production.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from tests.conftest import WorkerGroup, wait_for
from tests.fakes.coinbase_venue import harness as coinbase_harness
from tests.fakes.hyperliquid_venue import harness as hyperliquid_harness
from tests.fakes.live import LiveSetup, live_setup
from tests.fakes.synthetix import anvil_path
from tests.fakes.synthetix_venue import DEPOSIT
from tests.fakes.synthetix_venue import harness as synthetix_harness
from tests.webhooks.server import gunicorn
from trading import reconcile, services
from trading.models import Order, Signal, VenueAccount

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
WEBHOOK = "/api/webhooks/tradingview/"


def encodings(secret: str) -> set[str]:
    """The ways a secret can show up: raw, base64 (standard and URL-safe, any alignment), URL-encoded, hex, JSON."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), raw.hex(), raw.hex().upper(),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=True)[1:-1].replace("/", "\\/")}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + raw).decode().rstrip("=")
            # Drop the characters that mix padding bits or neighbours into the secret's own.
            start = (pad * 8 + 5) // 6 + 1
            forms.add(text[start:-2])
    return {f for f in forms if len(f) >= 8}


def hits(haystack: str, canaries: dict[str, str]) -> list[str]:
    """Which canaries (by name and form) occur in the text."""
    found = []
    for name, secret in canaries.items():
        for form in encodings(secret):
            if form in haystack:
                found.append(f"{name} as {form!r}")
    return found


def test_encodings_find_a_base64_wrapped_secret() -> None:
    """The search itself works: a secret inside a base64 blob, a URL or JSON is found."""
    canaries = {"x": "cnry/+=secret-0123456789"}
    blob = base64.b64encode(b"prefix " + canaries["x"].encode() + b" suffix").decode()
    assert hits(blob, canaries)
    assert hits("redis://:" + quote(canaries["x"], safe="") + "@h/0", canaries)
    assert hits(json.dumps({"k": canaries["x"]}), canaries)
    assert hits(canaries["x"].encode().hex(), canaries)
    assert not hits("nothing to see", canaries)


def key_canaries(name: str, key: str) -> dict[str, str]:
    """A hex private key's canaries: as configured (0x...), bare hex, and its raw bytes in base64."""
    bare = key.removeprefix("0x")
    return {name: key, f"{name} (hex)": bare, f"{name} (base64)": base64.b64encode(bytes.fromhex(bare)).decode()}


def test_key_canaries_find_a_hex_key_in_the_forms_it_leaks_in() -> None:
    key = "0x" + secrets.token_hex(32)
    canaries = key_canaries("k", key)
    assert hits(f"signer={key[2:]}", canaries) and hits(json.dumps({"pk": key}), canaries)
    assert hits(base64.b64encode(bytes.fromhex(key[2:])).decode(), canaries)
    assert hits(base64.b64encode(b"x" + key.encode()).decode(), canaries)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A redis-server of our own whose password is a canary (set in a 0600 config file, not on a command line)."""
    password = "cnry-redis+" + secrets.token_urlsafe(12) + "/="
    port = _free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\nrequirepass "{password}"\n'
                    f"dir {tmp_path}\n")
    conf.chmod(0o600)
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    wait_for(lambda: _pings(client), timeout=20, what="private redis up")
    try:
        yield port, password
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _http(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
          ) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _alert(slug: str, passphrase: str, **fields: str) -> bytes:
    return json.dumps({"passphrase": passphrase, "strategy": slug, "ticker": "BTCUSD",
                       "time": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"), **fields}).encode()


def _redis_dump(client: redis.Redis) -> str:
    """Every key and value in the Redis (strings, lists, hashes, sets, sorted sets)."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def _synthetix_live(stack: ExitStack, *, setenv: Any, make_strategy: Any) -> tuple[LiveSetup | None, str]:
    """A live Synthetix account whose environment credential is a fresh random wallet key; (setup, key).

    The wallet owns a funded perps account on the fake chain and trades. Only when the Synthetix tests are skipped
    on purpose (no anvil, TRADESITE_SKIP_ANVIL=1) is the key planted in an account whose endpoint refuses
    connections instead (no trading; still searched for).
    """
    key = "0x" + secrets.token_hex(32)
    if anvil_path() is None and os.environ.get("TRADESITE_SKIP_ANVIL") == "1":
        for name, value in {"CANARYSNX_PRIVATE_KEY": key, "CANARYSNX_ACCOUNT_ID": "1",
                            "CANARYSNX_ENDPOINT": f"http://127.0.0.1:{_free_port()}", "CANARYSNX_RPC_TIMEOUT": "2"
                            }.items():
            setenv(name, value)
        account = services.account_create(data={"name": "canary-snx", "venue": "synthetix", "network": "testnet",
                                                "credentials_env": "CANARYSNX", "max_leverage": "1"}, by="test")
        reconcile.account_reconcile(account=account)  # fails: the error path with the key loaded
        return None, key
    harness = stack.enter_context(synthetix_harness())
    account_id = harness.extra["chain"].open_account(key, DEPOSIT)  # type: ignore[attr-defined]
    harness.credentials.update(private_key=key, account_id=str(account_id))
    return live_setup(harness, setenv=setenv, make_strategy=make_strategy, name="canary-snx",
                      prefix="CANARYSNX"), key


def _executed(signal_ids: list[int], what: str) -> None:
    """Wait until the worker has decided each signal, and require that it executed."""
    def decided() -> bool:
        return all(s in ("executed", "rejected", "failed") for s in
                   Signal.objects.filter(pk__in=signal_ids).values_list("status", flat=True))

    deadline = time.monotonic() + 60
    while not decided() and time.monotonic() < deadline:
        time.sleep(0.05)
    found = list(Signal.objects.filter(pk__in=signal_ids).values_list("symbol", "status", "decision_detail"))
    assert all(status == "executed" for _, status, _ in found), (what, found)


def test_no_canary_leaks_anywhere(private_redis, make_account, make_strategy, set_price, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    redis_port, redis_password = private_redis
    db = connection.settings_dict
    db_password = "cnry-db+" + secrets.token_urlsafe(12) + "/="
    wrong_key = ed25519.Ed25519PrivateKey.generate()
    raw_wrong = wrong_key.private_bytes_raw() + wrong_key.public_key().public_bytes_raw()
    with ExitStack() as stack:
        venue = stack.enter_context(coinbase_harness(algorithm="EdDSA"))
        # Hyperliquid and Synthetix: live accounts whose keys are environment credentials (set in this process by
        # live_setup; the web and worker processes get the same variables below).
        hl = live_setup(stack.enter_context(hyperliquid_harness()), setenv=monkeypatch.setenv,
                        make_strategy=make_strategy, name="canary-hl", prefix="CANARYHL")
        snx, snx_key = _synthetix_live(stack, setenv=monkeypatch.setenv, make_strategy=make_strategy)
        canaries = {
            "venue api secret": venue.credentials["api_secret"],
            "venue api key": venue.credentials["api_key"],
            "unregistered venue secret": base64.b64encode(raw_wrong).decode(),
            "database password": db_password,
            "redis password": redis_password,
            "secret key": "cnry-sk-" + secrets.token_urlsafe(40),
            "metrics token": "cnry-mt-" + secrets.token_urlsafe(32),
            "wrong passphrase": "cnry-wp-" + secrets.token_urlsafe(24),
            **key_canaries("hyperliquid api wallet key", hl.harness.credentials["secret_key"]),
            **key_canaries("synthetix private key", snx_key),
        }
        log_dir = tmp_path / "logs"
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL",)},
            "DATABASE_URL": f"postgres://{db['USER']}:{quote(db_password, safe='')}@{db['HOST'] or '127.0.0.1'}:"
                            f"{db['PORT'] or 5432}/{db['NAME']}",
            "REDIS_URL": f"redis://:{quote(redis_password, safe='')}@127.0.0.1:{redis_port}/0",
            "REDIS_KEY_PREFIX": "canary:", "LOG_DIR": str(log_dir), "LOG_LEVEL": "DEBUG", "DEBUG": "0",
            "SECRET_KEY": canaries["secret key"], "METRICS_TOKEN": canaries["metrics token"],
            "WEBHOOK_RATE_LIMIT_PER_IP": "100000", "WEBHOOK_RATE_LIMIT_PER_STRATEGY": "100000",
            **venue.env("CANARYCB"),
            # A second live account whose key the venue does not know: every call it makes is a 401.
            "CANARYBAD_API_KEY": "organizations/0000/apiKeys/1111", "CANARYBAD_API_SECRET":
                canaries["unregistered venue secret"], "CANARYBAD_ENDPOINT": venue.endpoint, "CANARYBAD_TIMEOUT": "2",
            **{k: v for k, v in os.environ.items() if k.startswith(("CANARYHL_", "CANARYSNX_"))},
        }
        for name in ("CANARYCB_API_KEY", "CANARYCB_API_SECRET", "CANARYCB_ENDPOINT", "CANARYCB_TIMEOUT",
                     "CANARYBAD_API_KEY", "CANARYBAD_API_SECRET", "CANARYBAD_ENDPOINT", "CANARYBAD_TIMEOUT"):
            monkeypatch.setenv(name, env[name])

        live = services.account_create(data={"name": "canary-cb", "venue": "coinbase", "network": "mainnet",
                                             "credentials_env": "CANARYCB", "max_leverage": "1"}, by="test")
        bad = services.account_create(data={"name": "canary-bad", "venue": "coinbase", "network": "mainnet",
                                            "credentials_env": "CANARYBAD", "max_leverage": "1"}, by="test")
        reconcile.account_reconcile(account=live)  # opens the cash book at the venue's balance
        reconcile.account_reconcile(account=bad)  # a 401, recorded in the report
        strategy = make_strategy(live, mode="live", sizing_value="0.01")
        doomed = make_strategy(bad, mode="live", sizing_value="0.01")
        passphrase = services.strategy_webhook_secret_rotate(strategy=strategy, by="test")
        doomed_passphrase = services.strategy_webhook_secret_rotate(strategy=doomed, by="test")
        canaries["webhook passphrase"] = passphrase
        canaries["doomed webhook passphrase"] = doomed_passphrase
        staff = User.objects.create_user("canary-staff", password="canary-staff-pass-123", is_staff=True)
        api_token = services.api_token_create(user=staff, by="test")[1]

        group = WorkerGroup(env={**env, "TRADESITE_COMPONENT": "worker"}, log_dir=tmp_path)
        bodies: list[str] = []
        try:
            group.start()
            with gunicorn({**env, "TRADESITE_COMPONENT": "web"}, workers=1, log_path=tmp_path / "gunicorn.out",
                          app="tests.tradesite.canary_wsgi:application") as port:
                def call(method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, str]:
                    status, text = _http(port, method, path, body, headers)
                    bodies.append(f"{method} {path.split('?')[0]} {status}\n{text}")  # our own query is no leak
                    return status, text

                # The cycle: entry and exit on the Coinbase fake through the webhook, the worker and the venue.
                status, text = call("POST", WEBHOOK, _alert(strategy.slug, passphrase, action="buy",
                                                             contracts="0.01", id="canary-open"))
                assert status == 202, text
                opened = json.loads(text)["signal_id"]
                wait_for(lambda: Signal.objects.get(pk=opened).status == "executed", timeout=60,
                         what="entry filled on the venue")
                status, text = call("POST", WEBHOOK, _alert(strategy.slug, passphrase, action="close",
                                                             id="canary-close"))
                assert status == 202, text
                closed = json.loads(text)["signal_id"]
                wait_for(lambda: Signal.objects.get(pk=closed).status == "executed", timeout=60,
                         what="exit filled on the venue")
                # In and out on Hyperliquid and Synthetix through the webhook; the worker signs every order with
                # the canary keys.
                def cycle(action: str) -> list[int]:
                    ids = []
                    for setup, ticker in ((hl, "BTCUSDC.P"), (snx, "ETHUSD.P")):
                        if setup is None:
                            continue
                        if setup.account.name not in passphrases:
                            passphrases[setup.account.name] = services.strategy_webhook_secret_rotate(
                                strategy=setup.strategy, by="test")
                        passphrase = passphrases[setup.account.name]
                        status, text = call("POST", WEBHOOK, _alert(setup.strategy.slug, passphrase, ticker=ticker,
                                                                     action=action, id=f"canary-{ticker}-{action}"))
                        assert status == 202, text
                        ids.append(json.loads(text)["signal_id"])
                    return ids

                passphrases: dict[str, str] = {}
                _executed(cycle("buy"), "entries on Hyperliquid and Synthetix")
                _executed(cycle("close"), "exits on Hyperliquid and Synthetix")
                canaries.update({f"{name} webhook passphrase": value for name, value in passphrases.items()})
                # Forced failures: wrong passphrases (body and query string), a venue that answers 401, a 500.
                assert call("POST", WEBHOOK, _alert(strategy.slug, canaries["wrong passphrase"], action="buy",
                                                    id="canary-wrong"))[0] == 401
                assert call("POST", WEBHOOK + "?passphrase=" + quote(canaries["wrong passphrase"]),
                            _alert(strategy.slug, "", action="buy", id="canary-query"))[0] in (400, 401)
                status, text = call("POST", WEBHOOK, _alert(doomed.slug, doomed_passphrase, action="buy",
                                                            contracts="0.01", id="canary-doomed"))
                assert status == 202, text
                doomed_signal = json.loads(text)["signal_id"]
                wait_for(lambda: Signal.objects.get(pk=doomed_signal).status in ("rejected", "failed") or
                         Order.objects.filter(signal_id=doomed_signal, status__in=("rejected", "unknown")).exists(),
                         timeout=60, what="the venue's 401 handled")
                status, text = call("GET", "/__canary/boom")
                assert status == 500 and "Traceback" not in text
                # Every API response a user or a scraper can get.
                auth = {"Authorization": f"Token {api_token}"}
                for path in ("/api/strategies/", f"/api/strategies/{strategy.pk}/", "/api/accounts/",
                             f"/api/accounts/{live.pk}/", f"/api/accounts/{bad.pk}/", "/api/orders/",
                             *(f"/api/accounts/{pk}/" for pk in VenueAccount.objects.filter(
                                 name__in=("canary-hl", "canary-snx")).values_list("pk", flat=True)),
                             "/api/positions/", "/api/signals/", f"/api/signals/{opened}/",
                             f"/api/signals/{doomed_signal}/", "/api/pnl/", "/api/pnl/equity/", "/api/kill-switch/",
                             "/api/backtests/", "/api/venues/", "/api/schema/", "/healthz"):
                    status, _ = call("GET", path, **auth)
                    assert status == 200, path
                assert call("GET", "/readyz", **auth)[0] in (200, 503)  # no beat runs here: 503 names it
                assert call("GET", "/metrics", Authorization=f"Bearer {canaries['metrics token']}")[0] == 200
                assert call("GET", "/api/orders/")[0] in (401, 403)
        finally:
            group.stop_all()

    assert Order.objects.filter(strategy=strategy, status="filled").count() == 2  # the cycle really happened
    for setup in (hl, snx):  # and on Hyperliquid and Synthetix, signed with the canary keys
        if setup is not None:
            assert Order.objects.filter(strategy=setup.strategy, status="filled").count() == 2, setup.account.name

    # The dashboard's pages, as the staff user sees them (in this process, venue credentials in its environment).
    browser = Client()
    browser.force_login(staff)
    for path in ("/", "/strategies/", f"/strategies/{strategy.pk}/", f"/strategies/{strategy.pk}/webhook/",
                 f"/strategies/{doomed.pk}/", f"/strategies/{hl.strategy.pk}/", "/accounts/", "/orders/",
                 "/positions/", "/signals/", "/backtests/", "/webhook-tester/"):
        response = browser.get(path)
        assert response.status_code == 200, path
        bodies.append(f"GET {path} {response.status_code}\n{response.content.decode()}")

    # The technical 500 page (DEBUG on) and the plain one (DEBUG off), in this process, with the secrets in the
    # environment and in settings the way a deployment holds them.
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "METRICS_TOKEN"):
        monkeypatch.setenv(name, env[name])
    from django.test import override_settings

    with override_settings(ROOT_URLCONF="tests.tradesite.canary_urls", DATABASE_URL=env["DATABASE_URL"],
                           REDIS_URL=env["REDIS_URL"], CELERY_BROKER_URL=env["REDIS_URL"],
                           METRICS_TOKEN=canaries["metrics token"], SECRET_KEY=canaries["secret key"]):
        for debug in (True, False):
            with override_settings(DEBUG=debug):
                response = Client(raise_request_exception=False).get("/__canary/boom")
                assert response.status_code == 500
                page = response.content.decode()
                assert ("Traceback" in page) is debug
                bodies.append(f"DEBUG={debug} 500 page\n{page}")

    logs = "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log*")) if p.suffix != ".lock")
    outputs = "\n".join(p.read_text(errors="replace") for p in [tmp_path / "gunicorn.out",
                                                                *tmp_path.glob("worker-*.log")])
    assert '"level": "DEBUG"' in logs and "engine" in logs  # debug logging really was on
    assert "[REDACTED]" in logs  # the boom's message was caught by the filter
    client = redis.Redis(host="127.0.0.1", port=redis_port, password=redis_password)
    stored = _redis_dump(client)
    assert "canary:" in stored  # the broker and cache really used this Redis
    report = {
        "log files": hits(logs, canaries),
        "process output": hits(outputs, canaries),
        "redis": hits(stored, canaries),
        "pages and API responses": hits("\n".join(bodies), canaries),
    }
    assert report == {k: [] for k in report}
