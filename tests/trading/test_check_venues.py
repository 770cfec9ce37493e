"""`manage.py check_venues`: a table of checks per live account, a failing exit code, and never a secret."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from exchanges.base import CheckItem
from exchanges.errors import AuthError, TemporaryError
from tests.conftest import ROOT, worker_env
from tests.fakes import venues as fake_venues
from tests.fakes.live import bare_connector
from tests.fakes.memory_venue import MemoryVenue, failing_builder, install
from trading import services

SECRET = "s3cr3t-Key-Material-0123456789abcdef"
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkq2J7vM6rQ0wXn8Zy4pYc1Hh9aFv3lLq8Tt5sUe7kKoAoGCCqGSM49\n-----END EC PRIVATE KEY-----"


def _account(name: str, *, venue: str = "coinbase", network: str = "testnet", env: str = "CB_TEST",
             quote_asset: str = "USD"):  # type: ignore[no-untyped-def]
    return services.account_create(data={"name": name, "venue": venue, "network": network, "credentials_env": env,
                                         "quote_asset": quote_asset}, by="test")


def _run(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("check_venues", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def _row(output: str, account: str, check: str) -> str:
    """`RESULT  DETAIL` of one check of one account (the table's columns are separated by 2+ spaces)."""
    rows = [re.split(r"\s{2,}", line, maxsplit=5) for line in output.splitlines()]
    found = [row for row in rows if len(row) >= 5 and row[0] == account and row[3] == check]
    assert len(found) == 1, output
    return "  ".join(found[0][4:])


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> MemoryVenue:
    venue = MemoryVenue(venue="coinbase")
    venue.set_price("BTC/USD", "50000")
    install(monkeypatch, venue)
    monkeypatch.setenv("CB_TEST_API_KEY", "organizations/org-1/apiKeys/key-1")
    monkeypatch.setenv("CB_TEST_SECRET", PEM)
    return venue


def test_every_check_passes_and_prints_a_table_without_secrets(db, memory, make_account) -> None:
    _account("cb-test")
    make_account(name="paper-one")  # paper accounts are not checked
    output, error = _run()
    assert error is None, output
    assert output.splitlines()[0].split() == ["ACCOUNT", "VENUE", "NETWORK", "CHECK", "RESULT", "DETAIL"]
    assert "CB_TEST_API_KEY, CB_TEST_SECRET set" in _row(output, "cb-test", "credentials present")
    for check in ("credentials well-formed", "connectivity", "signature accepted", "permissions"):
        assert _row(output, "cb-test", check).startswith("ok  ")
    assert "6 markets, BTC/USD at 50000 from the venue's published URL" in _row(output, "cb-test", "connectivity")
    assert "paper-one" not in output
    assert "1 account(s), 5 check(s), 0 failed" in output
    assert "organizations/org-1" not in output and "MHcCAQEEIBkq2J7vM6rQ0wXn8Zy4pYc1Hh9aFv3lLq8Tt5sUe7kKoAoGCCqGSM49" \
        not in output
    # The connector got the credentials from the environment, keyed without the prefix.
    assert memory.configs[0].credentials == {"api_key": "organizations/org-1/apiKeys/key-1", "secret": PEM}
    assert memory.configs[0].network == "testnet"


def test_a_refused_permission_fails_the_command(db, memory) -> None:
    _account("cb-test")
    memory.verify_items = [CheckItem("signature accepted", True, "ok"),
                           CheckItem("permissions", False, "the key can transfer funds: refused")]
    output, error = _run()
    assert error is not None and error.returncode == 1
    assert "cb-test" in str(error) and "1 failed" in str(error)
    assert "FAIL  the key can transfer funds: refused" in _row(output, "cb-test", "permissions")


def test_missing_and_empty_credentials_fail_before_any_venue_call(db, memory, monkeypatch) -> None:
    _account("no-vars", env="CB_NONE")
    _account("empty-var", env="CB_EMPTY")
    monkeypatch.setenv("CB_EMPTY_API_KEY", "organizations/x/apiKeys/y")
    monkeypatch.setenv("CB_EMPTY_SECRET", "   ")
    output, error = _run()
    assert error is not None and error.returncode == 1
    assert "FAIL  no CB_NONE_* variables are set" in _row(output, "no-vars", "credentials present")
    assert "FAIL  empty: CB_EMPTY_SECRET" in _row(output, "empty-var", "credentials present")
    assert memory.calls == [] and memory.configs == []


def test_malformed_credentials_are_reported_with_the_secret_scrubbed(db, monkeypatch) -> None:
    # A library that quotes the bad key in its error message must not make us print it.
    install(monkeypatch, failing_builder(AuthError(f"cannot parse private key {SECRET!r}", venue="hyperliquid")),
            name="hyperliquid")
    monkeypatch.setenv("HL_TEST_PRIVATE_KEY", SECRET)
    monkeypatch.setenv("HL_TEST_ACCOUNT_ADDRESS", "0x" + "ab" * 20)
    _account("hl-test", venue="hyperliquid", env="HL_TEST", quote_asset="USDC")
    output, error = _run()
    assert error is not None and error.returncode == 1
    row = _row(output, "hl-test", "credentials well-formed")
    assert "FAIL  AuthError: cannot parse private key '[redacted]'" in row
    assert SECRET not in output and SECRET not in str(error)


def test_secrets_are_scrubbed_whatever_their_case_or_prefix(db, memory, monkeypatch) -> None:
    _account("cb-test")
    key = "0x" + "ab12cd34" * 8
    memory.verify_items = [CheckItem("signature accepted", False, f"signer {key[2:].upper()} is not {key} ({PEM})")]
    monkeypatch.setenv("CB_TEST_SECRET", key + "\n" + PEM)
    output, error = _run()
    assert error is not None
    detail = _row(output, "cb-test", "signature accepted")
    assert detail.startswith("FAIL  signer [redacted] is not [redacted] ([redacted]"), detail
    assert "PRIVATE KEY" not in detail
    assert "ab12cd34" not in output.lower() and "MHcCAQEEIBkq2J7vM6rQ0wXn8Zy4pYc1Hh9aFv3lLq8Tt5sUe7kKoAoGCCqGSM49" not in output


def test_no_connectivity_fails_and_names_only_the_endpoint_origin(db, memory, monkeypatch) -> None:
    monkeypatch.setenv("CB_TEST_ENDPOINT", "http://127.0.0.1:9/v2/rpc-api-key-in-path")
    _account("cb-test")
    memory.fail_next(TemporaryError("connection refused", venue="coinbase"), call="markets", times=10)
    output, error = _run()
    assert error is not None and error.returncode == 1
    row = _row(output, "cb-test", "connectivity")
    assert "FAIL  http://127.0.0.1:9: TemporaryError: connection refused" in row
    assert "rpc-api-key-in-path" not in output
    assert memory.configs[0].endpoint == "http://127.0.0.1:9/v2/rpc-api-key-in-path"


def test_network_and_account_filters(db, memory, monkeypatch) -> None:
    monkeypatch.setenv("CB_MAIN_API_KEY", "organizations/o/apiKeys/k")
    monkeypatch.setenv("CB_MAIN_SECRET", PEM)
    _account("cb-test")
    _account("cb-main", network="mainnet", env="CB_MAIN")
    output, error = _run("--network", "mainnet")
    assert error is None and "cb-main" in output and "cb-test" not in output
    output, error = _run("--account", "cb-test")
    assert error is None and "cb-test" in output and "cb-main" not in output
    output, error = _run("--account", "nobody")
    assert error is not None and error.returncode == 2 and "nobody" in str(error)


def test_no_live_account_is_not_a_failure(db, make_account) -> None:
    make_account()
    output, error = _run("--network", "testnet")
    assert error is None and "no live accounts are configured on testnet" in output


def test_the_real_command_exits_non_zero_and_prints_no_secret(transactional_db) -> None:
    _account("cb-sub", env="CB_SUB")
    env = worker_env(CB_SUB_API_KEY="organizations/o/apiKeys/k", CB_SUB_SECRET="")
    env["TRADESITE_COMPONENT"] = "tests"
    done = subprocess.run([sys.executable, "manage.py", "check_venues"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert _row(done.stdout, "cb-sub", "credentials present") == "FAIL  empty: CB_SUB_SECRET"
    assert "organizations/o/apiKeys/k" not in done.stdout + done.stderr


# --------------------------------------------------------------------------------------------- real fakes


@pytest.fixture(params=list(fake_venues.available()) or [pytest.param(None, marks=pytest.mark.skip(
    reason="no venue harness has landed yet"))])
def harness(request: pytest.FixtureRequest) -> Iterator[fake_venues.VenueHarness]:
    with fake_venues.harness(request.param) as running:
        yield running


def test_real_connectors_pass_against_their_fakes(db, harness, monkeypatch) -> None:
    for key, value in harness.env("VENUE_CHECK").items():
        monkeypatch.setenv(key, value)
    market = bare_connector(harness).market(harness.symbol)
    _account("live-check", venue=harness.venue, network=harness.network, env="VENUE_CHECK", quote_asset=market.quote)
    output, error = _run()
    assert error is None, output
    assert re.match(rf"ok  \d+ markets, \S+ at [\d.]+ from {re.escape(harness.endpoint.rstrip('/'))} in \d+ ms$",
                    _row(output, "live-check", "connectivity"))
    secrets = [v for k, v in harness.credentials.items() if "secret" in k or "key" in k]
    assert secrets
    for secret in secrets:
        for piece in [secret, *secret.splitlines()]:
            if len(piece.strip()) >= 12:
                assert piece.strip() not in output and piece.strip().lower() not in output.lower()

    harness.plan.fail_for(30, status=503)  # the venue is down: connectivity fails, the command exits 1
    output, error = _run()
    assert error is not None and error.returncode == 1
    assert _row(output, "live-check", "connectivity").startswith("FAIL  ")
