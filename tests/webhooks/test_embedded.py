"""The webhook on the zero-configuration stack: SQLite, the file cache and kombu's filesystem broker, on gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from tests.conftest import ROOT
from tests.webhooks.server import gunicorn, intake, request

pytestmark = pytest.mark.integration
URL = "/api/webhooks/tradingview/"


def _shell(env: dict[str, str], code: str) -> str:
    out = subprocess.run([sys.executable, "-c", "import django; django.setup()\n" + code], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


def test_webhook_on_sqlite_file_cache_and_filesystem_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE",
                        "REDIS_KEY_PREFIX")}
    env.update(TRADESITE_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="tradesite.settings",
               TRADESITE_COMPONENT="web")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, env=env, check=True,
                   timeout=300)
    slug, secret = json.loads(_shell(env, (
        "import json\nfrom decimal import Decimal\nfrom django.utils import timezone\n"
        "from trading import services\nfrom trading.prices import price_set\n"
        "a = services.account_create(data={'name': 'e', 'venue': 'paper', 'network': 'paper',"
        " 'paper_initial_cash': '10000', 'max_leverage': '5'}, by='test')\n"
        "s = services.strategy_create(data={'name': 'e', 'slug': 'embedded', 'kind': 'webhook', 'symbol': 'BTC/USD',"
        " 'account': a, 'mode': 'paper', 'sizing_mode': 'quantity', 'sizing_value': '0.01'}, by='test')\n"
        "services.strategy_start(strategy=s, by='test')\n"
        "price_set('BTC/USD', Decimal('50000'), time=timezone.now())\n"
        "print(json.dumps([s.slug, services.strategy_webhook_secret_rotate(strategy=s, by='test')]))")))
    alert = json.dumps({"passphrase": secret, "strategy": slug, "action": "buy", "ticker": "BTCUSD",
                        "time": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"), "id": "embedded-1"}).encode()
    with gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log") as port:
        status, body = request(port, "POST", URL, alert)
        assert status == 202, body
        assert request(port, "POST", URL, alert) == (200, {"signal_id": body["signal_id"], "duplicate": True})
        wrong = json.dumps({**json.loads(alert), "passphrase": "x" * 43}).encode()
        assert request(port, "POST", URL, wrong)[0] == 401
    # The intake role on the same stack: no fast path (it needs PostgreSQL and Redis), the web role's answers.
    with intake(env, log_path=tmp_path / "intake.log") as port:
        assert request(port, "GET", "/healthz")[1]["fast_path"] is False
        assert request(port, "POST", URL, alert) == (200, {"signal_id": body["signal_id"], "duplicate": True})
        second = json.dumps({**json.loads(alert), "id": "embedded-2"}).encode()
        status, answer = request(port, "POST", URL, second)
        assert status == 202 and answer["signal_id"] != body["signal_id"], answer
        assert request(port, "POST", URL, wrong)[0] == 401
    stored = _shell(env, f"from trading.models import Signal\nprint(Signal.objects.get(pk={body['signal_id']}).status)")
    assert stored == "received"
    # Queued through Celery's .delay() on the filesystem broker: one message for each signal.
    messages = list((tmp_path / "var" / "broker" / "queue").glob("*.msg"))
    assert len(messages) == 2
    text = messages[0].read_text()
    assert "trading.tasks.signal_process" in text
