"""The hot path's batching layer (infra/rows.py) on the real PostgreSQL: fewer round trips, same results."""

from __future__ import annotations

from datetime import datetime
from datetime import UTC
from decimal import Decimal
from typing import Any
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from django.db import DataError, IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from psycopg.pq import PipelineStatus, TransactionStatus

from infra import rows
from trading.execution import signal_process
from trading.intake import signal_create
from trading.models import AuditEvent, Order, Signal, VenueAccount

pytestmark = pytest.mark.django_db


def _audit(action: str, **data: Any) -> AuditEvent:
    return AuditEvent(time=timezone.now(), actor="test", action=action, entity="test", entity_id="1", data=data)


def _count_round_trips(fn: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        fn()
    return len(captured.captured_queries)


def test_the_tests_run_where_batching_applies() -> None:
    assert rows.batchable(), "these tests need PostgreSQL (libpq's pipeline mode)"


def test_writes_wait_and_travel_with_the_next_statement_which_sees_them(make_account: Any) -> None:
    account = make_account()
    with transaction.atomic(), rows.batching():
        account.cash = Decimal("123.456")
        rows.save_fields(account, ["cash"])
        rows.insert([_audit("one")], returning=False)
        assert rows.batching_active()
        pipelined = []

        def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            pipelined.append(connection.connection.pgconn.pipeline_status == PipelineStatus.ON)
            return execute(sql, params, many, context)

        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(spy):
            # An ORM read (not ours): the waiting writes go in front of it, in the same round trip (one pipeline,
            # one Sync); the next read has nothing in front of it.
            assert VenueAccount.objects.get(pk=account.pk).cash == Decimal("123.456")
            assert AuditEvent.objects.filter(action="one").count() == 1
        assert pipelined == [True, False]
        carried, *reads = captured.captured_queries
        assert carried["carried"] and carried["sql"].startswith('UPDATE "trading_venueaccount"'), carried
        assert [q["sql"].split()[0] for q in reads] == ["SELECT", "SELECT"]
    account.refresh_from_db()
    assert account.cash == Decimal("123.456")


def test_writes_waiting_before_a_server_side_cursor_go_first(make_account: Any) -> None:
    account = make_account()
    with transaction.atomic(), rows.batching():
        rows.update(VenueAccount, account.pk, {"paper_sequence": 41})
        # .iterator() reads through a named cursor, which cannot join a pipeline: the write goes just before it
        assert [a.paper_sequence for a in VenueAccount.objects.filter(pk=account.pk).iterator(chunk_size=10)] == [41]


def test_writes_left_at_the_end_of_the_scope_are_sent_before_it_ends(make_account: Any) -> None:
    account = make_account()
    with transaction.atomic():
        with rows.batching():
            rows.insert([_audit("late", text="it's 50% 'quoted' \\ back")], returning=False)
            account.cash = Decimal("-0.000000000000000001")
            rows.save_fields(account, ["cash"])
        event = AuditEvent.objects.get(action="late")
    assert event.data == {"text": "it's 50% 'quoted' \\ back"}  # literals survive quotes, % and backslashes
    account.refresh_from_db()
    assert account.cash == Decimal("-0.000000000000000001")


def test_prefetched_reads_ride_with_the_next_read_and_are_answered_from_memory(make_account: Any) -> None:
    account = make_account()
    cash_sql = 'SELECT "cash" FROM "trading_venueaccount" WHERE "id" = %s'
    name_sql = 'SELECT "name" FROM "trading_venueaccount" WHERE "id" = %s'
    with transaction.atomic(), rows.batching():
        rows.prefetch([(cash_sql, [account.pk]), (name_sql, [account.pk])])

        def reads() -> None:
            assert rows.fetch_all('SELECT 1 WHERE %s', [True]) == [(1,)]
            assert rows.fetch_one(cash_sql, [account.pk]) == (Decimal("10000"),)
            assert rows.fetch_one(name_sql, [account.pk]) == (account.name,)

        assert _count_round_trips(reads) == 1
        # A prefetched answer is used once: asking again reads the database again.
        assert _count_round_trips(lambda: rows.fetch_one(cash_sql, [account.pk])) == 1


def _unsaved_orders(make_account: Any, make_strategy: Any, key: str) -> tuple[Any, Any]:
    """An account, and a factory of unsaved market orders of one signal on it."""
    account = make_account()
    strategy = make_strategy(account)
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key=key, action="open_long",
                                     enqueue=False)
    now = timezone.now()

    def order(cid: str) -> Order:
        return Order(client_order_id=cid, account=account, strategy=strategy, signal=signal, symbol="BTC/USD",
                     side="buy", type="market", purpose="entry", quantity=Decimal("0.1"), status="submitting",
                     created_at=now, updated_at=now)

    return account, order


def test_reserved_ids_let_inserts_wait_and_still_give_each_object_its_pk(make_account: Any,
                                                                        make_strategy: Any) -> None:
    _, order = _unsaved_orders(make_account, make_strategy, "r1")

    with transaction.atomic(), rows.batching():
        rows.reserve_ids(Order, 2)
        rows.fetch_all("SELECT 1 WHERE %s", [True])  # the reservation rides along
        first, second, third = order("a"), order("b"), order("c")
        assert _count_round_trips(lambda: rows.insert([first, second])) == 0  # waits: ids were reserved
        assert first.pk and second.pk == first.pk + 1 and not first._state.adding
        assert _count_round_trips(lambda: rows.insert([third])) == 1  # none left: an immediate INSERT RETURNING
        assert third.pk
    assert sorted(Order.objects.values_list("client_order_id", "pk")) == [
        ("a", first.pk), ("b", second.pk), ("c", third.pk)]


def test_an_in_memory_savepoint_drops_only_the_writes_queued_inside() -> None:
    with transaction.atomic(), rows.batching():
        rows.insert([_audit("kept")], returning=False)
        with pytest.raises(RuntimeError), rows.savepoint():
            rows.insert([_audit("dropped")], returning=False)
            raise RuntimeError("venue refused")
        rows.insert([_audit("after")], returning=False)
    assert sorted(AuditEvent.objects.values_list("action", flat=True)) == ["after", "kept"]


def test_a_savepoint_whose_writes_were_already_sent_rolls_the_whole_transaction_back() -> None:
    with transaction.atomic():
        rows.insert([_audit("before")], returning=False)  # outside a batching scope: written at once
        with rows.batching():
            with pytest.raises(RuntimeError), rows.savepoint():
                rows.insert([_audit("sent")], returning=False)
                assert AuditEvent.objects.filter(action="sent").count() == 1  # this read sent the waiting write
                raise RuntimeError("too late to undo in memory")
            assert connection.needs_rollback  # nothing half-done can commit
    assert AuditEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_forgets_the_statements_it_prepared() -> None:
    bad = 'SELECT 1 / %s'
    with pytest.raises(Exception), transaction.atomic():  # noqa: B017 - division by zero from PostgreSQL
        rows.fetch_all(bad, [0])
    # Prepared again under a new name: no "does not exist" or "already exists" error.
    assert rows.fetch_all(bad, [1]) == [(1,)]
    connection.close()  # a new connection knows none of them
    assert rows.fetch_all(bad, [2]) == [(0,)]


def test_a_percent_sign_is_read_as_django_reads_it() -> None:
    assert rows.fetch_all("SELECT '5%%' WHERE %s", [True]) == [("5%",)]  # %% is one percent sign
    with pytest.raises(ValueError, match="cannot be batched"):
        rows.fetch_all("SELECT '5%' WHERE %s", [True])  # a lone % is neither a placeholder nor a percent sign


def _other_session() -> psycopg.Connection[Any]:
    """A second session on the test database (autocommit), to look at ours from outside."""
    s = connection.settings_dict
    return psycopg.connect(f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} user={s['USER']} "
                           f"dbname={s['NAME']}", autocommit=True)


def test_values_never_reach_the_server_inside_the_statement_text() -> None:
    marker = f"bound {uuid.uuid4().hex} it's"
    assert rows.fetch_all("SELECT %s::text", [marker]) == [(marker,)]
    with _other_session() as other:
        (text,) = other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                                [connection.connection.info.backend_pid]).fetchone()
    assert text == "SELECT $1::text"  # what our session ran last: the statement, its value bound apart


def test_statements_are_prepared_at_protocol_level_with_typed_parameters() -> None:
    sql = "SELECT %s::numeric + 1, %s::text, %s"
    assert rows.fetch_all(sql, [Decimal("0.5"), "a", datetime(2026, 1, 2, tzinfo=UTC)]) == [
        (Decimal("1.5"), "a", datetime(2026, 1, 2, tzinfo=UTC))]
    with connection.cursor() as cursor:
        cursor.execute("SELECT from_sql, parameter_types::text[] FROM pg_prepared_statements WHERE statement = %s",
                       ["SELECT $1::numeric + 1, $2::text, $3"])
        found = cursor.fetchall()
    # Not SQL PREPARE/EXECUTE with values written in: Parse/Bind, the parameters typed by psycopg's dumpers (the
    # string untyped, as psycopg sends a str, so PostgreSQL takes the type from its context).
    assert found == [(False, ["numeric", "text", "timestamp with time zone"])]


@pytest.mark.django_db(transaction=True)
def test_a_statement_whose_batch_failed_before_it_ran_is_prepared_again() -> None:
    fresh = "SELECT %s::int * 2"
    with pytest.raises(DataError), rows.batching():  # autocommit: nothing rolls back on the client's side
        rows.prefetch([(fresh, [21])])
        rows.fetch_all("SELECT 1 / %s", [0])  # fails first: the prefetch's Parse is skipped
    assert rows.fetch_all(fresh, [21]) == [(42,)]  # not "prepared statement ... does not exist"


def test_a_failed_write_batch_raises_djangos_error_and_rolls_back_with_its_transaction(make_account: Any) -> None:
    account = make_account()
    with pytest.raises(IntegrityError), transaction.atomic(), rows.batching():
        rows.update(VenueAccount, account.pk, {"paper_sequence": 99})
        rows.execute('UPDATE "trading_venueaccount" SET "name" = NULL WHERE "id" = %s', [account.pk])
    account.refresh_from_db()  # the connection is usable, and the batch's first write was undone with the rest
    assert account.paper_sequence != 99


@pytest.mark.django_db(transaction=True)
def test_a_committing_batch_ends_the_transaction_django_opened() -> None:
    committed = []
    with transaction.atomic(), rows.batching(commit=True):
        rows.insert([_audit("with the commit")], returning=False)
        transaction.on_commit(lambda: committed.append(connection.connection.info.transaction_status))
        with _other_session() as other:  # not yet: the write waits for the end of the scope
            assert other.execute("SELECT count(*) FROM trading_auditevent").fetchone() == (0,)
    assert committed == [TransactionStatus.IDLE]  # Django's own commit found nothing left to do, and ran the hooks
    with _other_session() as other:
        assert other.execute("SELECT count(*) FROM trading_auditevent WHERE action = 'with the commit'").fetchone() \
            == (1,)
    assert rows.fetch_all("SELECT %s::int", [1]) == [(1,)]  # and the next statement starts afresh


def test_the_working_orders_index_covers_exactly_the_working_statuses() -> None:
    index = next(i for i in Order._meta.indexes if i.name == "order_working_by_account")
    assert sorted(index.condition.children[0][1]) == sorted(str(s) for s in Order.WORKING)


@pytest.mark.django_db(transaction=True)
def test_the_engine_unit_commits_with_its_last_writes(make_account: Any, make_strategy: Any,
                                                      set_price: Any) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_mode="quantity", sizing_value="0.1")
    set_price("BTC/USD", "50000")
    keys = iter(["open", "close"])

    def process(action: str) -> Signal:
        signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key=next(keys),
                                         action=action, enqueue=False)
        result = signal_process(signal_id=signal.pk)
        assert result.status == Signal.Status.EXECUTED, result.decision_detail
        return result

    process("open_long")  # the day's first signal and the strategy's first position row write more
    with CaptureQueriesContext(connection) as captured:
        closed = process("close")
    sent = [q["sql"].split()[0] for q in captured.captured_queries]
    # The signal's INSERT, committed on its own (signal_create), then: the account read, BEGIN (Django's entry: the
    # BEGIN itself goes with the next batch), the reads with the locks, the writes with the COMMIT (Django logs its
    # no-op commit as a last entry).
    assert sent == ["INSERT", "SELECT", "BEGIN", "SELECT", "INSERT", "COMMIT"], sent
    assert captured.captured_queries[-2]["sql"].endswith(";\nCOMMIT")
    assert connection.connection.info.transaction_status.name == "IDLE"
    assert Order.objects.get(signal=closed).status == Order.Status.FILLED
    account.refresh_from_db()
    assert account.cash == account.paper_cash == Decimal("10000") - 2 * Decimal("0.1") * Decimal("50000") * Decimal(
        "0.0005")  # flat again: our book and the venue's agree to the last digit (two taker fees paid)


def _sent_statements(captured: CaptureQueriesContext) -> list[str]:
    """The statements sent through rows (a batch is one captured entry, its statements joined by ";\n"), without
    Django's transaction and savepoint entries."""
    django = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")
    return [part for q in captured.captured_queries if not q["sql"].startswith(django)
            for part in q["sql"].split(";\n")]


def test_a_waiting_insert_takes_later_changes_and_updates_of_one_row_merge(make_account: Any,
                                                                          make_strategy: Any) -> None:
    account, make_order = _unsaved_orders(make_account, make_strategy, "f1")
    order = make_order("folded")
    with CaptureQueriesContext(connection) as captured, transaction.atomic(), rows.batching():
        rows.reserve_ids(Order, 1)
        rows.fetch_all("SELECT 1 WHERE %s", [True])
        rows.insert([order])
        order.status, order.filled_quantity = "filled", Decimal("0.1")
        rows.save_fields(order, ["status", "filled_quantity"])
        account.cash = Decimal("9990")
        rows.save_fields(account, ["cash"])
        rows.update(VenueAccount, account.pk, {"paper_cash": Decimal("4990"), "paper_sequence": 7})
        rows.update(VenueAccount, account.pk, {"paper_sequence": 8})
    sent = _sent_statements(captured)
    assert len(sent) == 4, sent  # SELECT 1 and the id reservation, one INSERT of the order, one UPDATE of the account
    stored = Order.objects.get(pk=order.pk)
    assert (stored.status, stored.filled_quantity) == ("filled", Decimal("0.1"))
    account.refresh_from_db()
    assert (account.cash, account.paper_cash, account.paper_sequence) == (Decimal("9990"), Decimal("4990"), 8)


def test_writes_dropped_by_a_savepoint_are_never_folded_into(make_account: Any) -> None:
    account = make_account()
    with transaction.atomic(), rows.batching():
        with pytest.raises(RuntimeError), rows.savepoint():
            rows.update(VenueAccount, account.pk, {"paper_sequence": 99})
            raise RuntimeError("refused")
        rows.insert([_audit("after the refusal")], returning=False)  # takes the dropped write's place in the queue
        rows.update(VenueAccount, account.pk, {"paper_sequence": 5})
    account.refresh_from_db()
    assert account.paper_sequence == 5
    assert AuditEvent.objects.filter(action="after the refusal").count() == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
       number=st.decimals(allow_nan=False, allow_infinity=False, places=18, min_value=Decimal("-1e19"),
                          max_value=Decimal("1e19")),
       whole=st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
       when=st.datetimes(timezones=st.just(UTC), min_value=datetime(1970, 1, 2),  # noqa: DTZ001 - hypothesis bounds are naive, timezones= makes them aware
                         max_value=datetime(2200, 1, 1)))  # noqa: DTZ001 - see above
def test_values_bound_as_parameters_come_back_exactly(text: str, number: Decimal, whole: int,
                                                      when: datetime) -> None:
    found = rows.fetch_all("SELECT %s::text, %s::numeric, %s::bigint, %s::timestamptz, %s::boolean, %s::text",
                           [text, number, whole, when, True, None])
    assert found == [(text, number, whole, when, True, None)]
