"""psycopg2 against a running Millrace: simple protocol, client-side
parameters, transactions, savepoints, named (server) cursors, types.

Usage: python psycopg2_client.py PORT. Exits non-zero on the first failed
check, printing what differed."""
import datetime
import decimal
import sys

import psycopg2
import psycopg2.errors
import psycopg2.extras

PORT = int(sys.argv[1])
conn = psycopg2.connect(host="127.0.0.1", port=PORT, user="millrace", dbname="dev")


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


check(conn.server_version, 160006, "server_version")
check(conn.get_parameter_status("standard_conforming_strings"), "on", "scs")
check(conn.get_parameter_status("client_encoding"), "UTF8", "client_encoding")

cur = conn.cursor()
# psycopg2 opens a transaction block (BEGIN) before the first statement.
cur.execute(
    "CREATE TABLE p2_orders (id BIGINT PRIMARY KEY, customer TEXT, amount NUMERIC(10,2), "
    "placed TIMESTAMP, paid BOOLEAN, ratio DOUBLE PRECISION, day DATE)"
)
check(conn.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_INTRANS, "in block")
conn.commit()
check(conn.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_IDLE, "idle")

rows = [
    (1, "ann", decimal.Decimal("10.50"), datetime.datetime(2026, 1, 2, 3, 4, 5), True, 0.25, datetime.date(2026, 1, 2)),
    (2, "bob", decimal.Decimal("3.25"), datetime.datetime(2026, 1, 3, 0, 0, 0), False, 1.5, datetime.date(2026, 1, 3)),
    (3, "ann", decimal.Decimal("7.00"), datetime.datetime(2026, 1, 4, 12, 0, 0), None, None, None),
    (4, "o'hara", decimal.Decimal("1.00"), datetime.datetime(2026, 1, 5, 12, 0, 0), True, -2.0, datetime.date(2026, 1, 5)),
]
cur.executemany("INSERT INTO p2_orders VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
check(cur.rowcount, 4, "rows inserted by executemany")
cur.execute(
    "CREATE MATERIALIZED VIEW p2_totals AS SELECT customer, count(*) AS n, sum(amount) AS total "
    "FROM p2_orders GROUP BY customer"
)
conn.commit()

cur.execute("SELECT * FROM p2_orders ORDER BY id")
check(cur.fetchall(), rows, "rows round trip with their types")
check([d.name for d in cur.description][:3], ["id", "customer", "amount"], "description")
# Columns are named as PostgreSQL names them (repeats made distinct).
cur.execute("SELECT 2, 1 + 1, count(*), CASE WHEN true THEN 1 END, customer FROM p2_orders GROUP BY customer")
check([d.name for d in cur.description], ["?column?", "?column?_2", "count", "case", "customer"], "column names")
cur.fetchall()
cur.execute("SELECT customer, n, total FROM p2_totals WHERE customer = %s", ("ann",))
check(cur.fetchone(), ("ann", 2, decimal.Decimal("17.50")), "view row")
conn.rollback()

# Updates and deletes flow into the view.
cur.execute("UPDATE p2_orders SET amount = amount + 1 WHERE customer = %s", ("ann",))
check(cur.rowcount, 2, "updated rows")
cur.execute("DELETE FROM p2_orders WHERE id = %s", (2,))
conn.commit()
cur.execute("SELECT customer, n, total FROM p2_totals ORDER BY customer")
check(cur.fetchall(), [("ann", 2, decimal.Decimal("19.50")), ("o'hara", 1, decimal.Decimal("1.00"))], "view after changes")
conn.rollback()

# A failed statement aborts the block until ROLLBACK.
try:
    cur.execute("SELECT * FROM no_such_table")
    raise AssertionError("no error for a missing table")
except psycopg2.errors.UndefinedTable:
    pass
check(conn.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_INERROR, "aborted block")
try:
    cur.execute("SELECT 1")
    raise AssertionError("aborted block accepted a statement")
except psycopg2.errors.InFailedSqlTransaction:
    pass
conn.rollback()
cur.execute("SELECT 1")
check(cur.fetchone(), (1,), "after rollback")

# Savepoints: an error rolled back to a savepoint keeps the block usable.
cur.execute("SAVEPOINT before_error")
try:
    cur.execute("SELECT 1/0")
    raise AssertionError("no division error")
except psycopg2.errors.DivisionByZero:
    pass
cur.execute("ROLLBACK TO SAVEPOINT before_error")
cur.execute("SELECT 2")
check(cur.fetchone(), (2,), "after rollback to savepoint")
cur.execute("RELEASE SAVEPOINT before_error")
conn.commit()

# Settings are per session and reported back.
cur.execute("SET application_name = 'psycopg2-check'")
check(conn.get_parameter_status("application_name"), "psycopg2-check", "reported application_name")
cur.execute("SHOW application_name")
check(cur.fetchone(), ("psycopg2-check",), "SHOW")
cur.execute("SHOW transaction isolation level")
check(cur.fetchone(), ("read committed",), "isolation")
conn.commit()

# Named cursors are server cursors: DECLARE, FETCH FORWARD n, CLOSE.
with conn.cursor(name="p2_cursor") as named:
    named.itersize = 2
    named.execute("SELECT id, customer FROM p2_orders WHERE amount > %s ORDER BY id", (decimal.Decimal("0"),))
    check(list(named), [(1, "ann"), (3, "ann"), (4, "o'hara")], "named cursor rows")
with conn.cursor(name="p2_cursor_many") as named:
    named.execute("SELECT id FROM p2_orders ORDER BY id")
    check(named.fetchmany(2), [(1,), (3,)], "fetchmany")
    check(named.fetchall(), [(4,)], "fetchall after fetchmany")
conn.commit()

# DictCursor and autocommit.
conn.autocommit = True
with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as dict_cur:
    dict_cur.execute("SELECT customer, n FROM p2_totals ORDER BY customer LIMIT 1")
    check(dict_cur.fetchone(), {"customer": "ann", "n": 2}, "dict row")
check(conn.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_IDLE, "autocommit idle")
cur.execute("DROP MATERIALIZED VIEW p2_totals")
cur.execute("DROP TABLE p2_orders")
conn.close()
print("psycopg2 ok")
