"""docker-compose.yml, the Dockerfile and .env.example, checked by reading them (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ("web", "intake", "worker-execution", "worker-monitoring", "beat", "marketdata")
_SECRETISH = re.compile(r"PASS|SECRET|TOKEN|KEY|PRIVATE|CREDENTIAL", re.I)
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:[:?\-][^}]*)?\}")


def documented() -> set[str]:
    """Variable names .env.example sets or shows (commented `# NAME=` lines count)."""
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_the_services_are_there() -> None:
    assert set(SERVICES) == {"postgres", "redis", *APP_SERVICES}
    commands = {name: SERVICES[name]["command"] for name in APP_SERVICES}
    assert commands == {"web": ["web"], "intake": ["intake"], "worker-execution": ["worker-execution"],
                        "worker-monitoring": ["worker-monitoring"], "beat": ["beat"],
                        "marketdata": ["marketdata"]}
    # One image, one entry point (the bootstrap) for every role.
    assert {SERVICES[name]["image"] for name in APP_SERVICES} == {"tradesite:latest"}
    assert SERVICES["beat"]["deploy"]["replicas"] == 1
    assert SERVICES["marketdata"]["deploy"]["replicas"] == 1


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    for name, service in SERVICES.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in APP_SERVICES:
        depends = SERVICES[name]["depends_on"]
        assert depends["postgres"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    assert SERVICES["web"]["healthcheck"]["test"] == ["CMD", "python", "-m", "tradesite.healthcheck"]


def test_state_lives_on_named_volumes_and_config_is_mounted_read_only() -> None:
    assert {"pgdata", "redisdata", "tradesite-var", "tradesite-logs"} <= set(COMPOSE["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "redisdata:/data" in SERVICES["redis"]["volumes"]
    for name in APP_SERVICES:
        volumes = SERVICES[name]["volumes"]
        assert "tradesite-var:/var/lib/tradesite" in volumes, name
        assert "tradesite-logs:/var/log/tradesite" in volumes, name
        assert "./config:/etc/tradesite:ro" in volumes, name
        assert SERVICES[name]["environment"]["LOG_DIR"] == "/var/log/tradesite"
        assert SERVICES[name]["environment"]["TRADESITE_COMPONENT"] == name


def test_redis_keeps_data_refuses_eviction_and_needs_a_password() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    # The password comes from the environment at run time, through a config file (not the server's argv).
    assert """printf 'requirepass "%s"\\n' "$$REDIS_PASSWORD" > /tmp/redis-auth.conf""" in command
    assert "exec redis-server /tmp/redis-auth.conf" in command and "--requirepass" not in command
    assert SERVICES["redis"]["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD")
    assert "ports" not in SERVICES["redis"] and "ports" not in SERVICES["postgres"]  # not published


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}[{i}]")]
    return [(path, str(node))]


def test_no_secret_value_is_written_inline() -> None:
    for path, value in _strings(COMPOSE):
        key = path.rsplit(".", 1)[-1]
        if _SECRETISH.search(key):
            assert _VAR.fullmatch(value), f"{path} holds a literal value: {value!r}"
        # A password inside a URL must be a ${VAR} reference.
        for match in re.finditer(r"://[^:/@\s]*:([^@\s]+)@", value):
            assert _VAR.fullmatch(match.group(1)), f"{path} has a literal password in a URL"
        assert "requirepass" not in value or "$$REDIS_PASSWORD" in value


def test_every_compose_variable_is_documented_in_the_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(_VAR.findall(text))
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD"} <= used
    assert used - documented() == set()


def _env_reads(path: Path) -> set[str]:
    text = path.read_text()
    pattern = (r"(?:os\.environ\.get|os\.environ\[|env_bool|env_list|env\.get|_bool\((?:env|os\.environ), ?)"
               r"\(?\"([A-Z][A-Z0-9_]+)\"")
    return set(re.findall(pattern, text))


def test_every_variable_the_code_reads_is_documented() -> None:
    reads = set()
    for rel in ("tradesite/settings.py", "tradesite/bootstrap.py", "tradesite/healthcheck.py", "trading/connectors.py"):
        reads |= _env_reads(ROOT / rel)
    from webhooks.config import DEFAULTS

    reads |= set(DEFAULTS)
    assert {"SECRET_KEY", "DATABASE_URL", "TRADESITE_HTTPS", "ADMIN_USERNAME", "WEBHOOK_ALLOWED_IPS"} <= reads
    missing = reads - documented()
    assert missing == set(), f"add these to .env.example: {sorted(missing)}"


def test_venue_credentials_are_documented_as_prefixed_variables() -> None:
    """trading/connectors.py reads `<credentials_env>_<KEY>` and `<PREFIX>_ENDPOINT`: the example shows each venue's."""
    assert '_ENDPOINT' in (ROOT / "trading" / "connectors.py").read_text()
    names = documented()
    for name in ("COINBASE_MAIN_API_KEY", "COINBASE_MAIN_API_SECRET_FILE", "HYPERLIQUID_MAIN_SECRET_KEY_FILE",
                 "HYPERLIQUID_MAIN_ACCOUNT_ADDRESS", "SYNTHETIX_MAIN_PRIVATE_KEY_FILE", "COINBASE_MAIN_ENDPOINT"):
        assert name in names, name


def test_env_example_holds_no_secret_values() -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and _SECRETISH.search(match.group(1)) and not match.group(1).endswith("_FILE"):
            assert match.group(2) in ("", "generate"), line


@pytest.mark.parametrize("needle", [
    "FROM python:3.11-slim-bookworm AS build",
    "FROM python:3.11-slim-bookworm AS runtime",
    "COPY --from=build /wheels /wheels",
    "--only-binary TA-Lib",
    "USER tradesite:tradesite",
    'HEALTHCHECK --interval=15s --timeout=6s --start-period=90s --retries=3 CMD ["python", "-m", '
    '"tradesite.healthcheck"]',
    'ENTRYPOINT ["python", "-m", "tradesite.bootstrap"]',
])
def test_dockerfile_is_multi_stage_non_root_with_a_health_check(needle: str) -> None:
    assert needle in (ROOT / "Dockerfile").read_text()


def test_dockerfile_installs_only_pinned_requirements_from_the_build_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    runtime = text.split("AS runtime", 1)[1]
    assert "build-essential" not in runtime  # compilers stay in the build stage
    assert "pip install --no-index --find-links /wheels -r /tmp/requirements.txt" in runtime
    assert "TA-Lib==" in (ROOT / "requirements.txt").read_text()
    assert runtime.index("USER tradesite") > runtime.index("COPY . .")


def test_worker_and_beat_probes_need_their_own_fresh_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker container is healthy when its own node (name@this host) wrote a heartbeat for each of its queues
    lately, not when Redis merely answers (it did with every worker dead); beat when it ticked lately."""
    import os
    import socket
    import time

    import redis

    from tradesite import healthcheck
    from tradesite.heartbeat import RedisHeartbeats

    prefix = f"{os.environ['REDIS_KEY_PREFIX']}probe-test:"
    monkeypatch.setenv("REDIS_URL", os.environ["REDIS_URL"])
    monkeypatch.setenv("REDIS_KEY_PREFIX", prefix)
    monkeypatch.setenv("TRADESITE_HEARTBEAT_STALE_SECONDS", "20")
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    store = RedisHeartbeats(client, prefix)
    host = socket.gethostname()
    try:
        monkeypatch.setenv("TRADESITE_COMPONENT", "worker-monitoring")
        assert healthcheck.main() == 1  # Redis answers, but no worker does
        store.worker_beat(f"monitoring@other-{host}", ["monitoring", "strategies"], time.time())
        assert healthcheck.main() == 1  # another container's worker does not vouch for this one
        store.worker_beat(f"monitoring@{host}", ["monitoring"], time.time())
        assert healthcheck.main() == 1  # one of its two queues only
        store.worker_beat(f"monitoring@{host}", ["monitoring", "strategies"], time.time() - 30)
        assert healthcheck.main() == 1  # stale
        store.worker_beat(f"monitoring@{host}", ["monitoring", "strategies"], time.time())
        assert healthcheck.main() == 0
        monkeypatch.setenv("TRADESITE_COMPONENT", "beat")
        assert healthcheck.main() == 1
        store.beat_tick(time.time())
        assert healthcheck.main() == 0
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
        assert healthcheck.main() == 1
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)


def test_secret_files_fill_variables(tmp_path: Path) -> None:
    from tradesite.bootstrap import Refused, env_files_load

    (tmp_path / "secret").write_text("from-a-file-0123456789\n")
    env = {"COINBASE_MAIN_API_SECRET_FILE": str(tmp_path / "secret"), "KEEP": "x",
           "DATABASE_URL": "direct", "DATABASE_URL_FILE": str(tmp_path / "secret")}
    assert env_files_load(env) == ["COINBASE_MAIN_API_SECRET"]
    assert env["COINBASE_MAIN_API_SECRET"] == "from-a-file-0123456789" and env["DATABASE_URL"] == "direct"
    with pytest.raises(Refused, match="SECRET_KEY_FILE points at"):
        env_files_load({"SECRET_KEY_FILE": str(tmp_path / "nope")})
