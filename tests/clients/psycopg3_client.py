"""psycopg 3 against a running Millrace: the extended protocol with
client-typed parameters (int2, numeric, timestamp, bool, text), prepared
statements, binary results, server cursors, the empty query, transactions.

Usage: python psycopg3_client.py PORT. Exits non-zero on the first failed
check, printing what differed."""
import datetime
import decimal
import sys

import psycopg
import psycopg.errors

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} user=millrace dbname=dev"


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


conn = psycopg.connect(DSN, autocommit=True)
check(conn.info.server_version, 160006, "server_version")
conn.execute(
    "CREATE TABLE p3_orders (id BIGINT PRIMARY KEY, customer TEXT, amount NUMERIC(10,2), "
    "placed TIMESTAMP, paid BOOLEAN, ratio DOUBLE PRECISION, day DATE)"
)
rows = [
    (1, "ann", decimal.Decimal("10.50"), datetime.datetime(2026, 1, 2, 3, 4, 5), True, 0.25, datetime.date(2026, 1, 2)),
    (2, "bob", decimal.Decimal("3.25"), datetime.datetime(2026, 1, 3, 0, 0, 0), False, 1.5, datetime.date(2026, 1, 3)),
    (3, "ann", decimal.Decimal("7.00"), datetime.datetime(2026, 1, 4, 12, 0, 0), None, None, None),
]
with conn.cursor() as cur:
    # Small integers travel as int2 and datetimes as binary timestamp
    # parameters: the server coerces them to the columns' types.
    cur.executemany("INSERT INTO p3_orders VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    conn.execute(
        "CREATE MATERIALIZED VIEW p3_totals AS SELECT customer, count(*) AS n, sum(amount) AS total "
        "FROM p3_orders GROUP BY customer"
    )
    cur.execute("SELECT * FROM p3_orders ORDER BY id")
    check(cur.fetchall(), rows, "text results")
    # The same statement run repeatedly becomes a named prepared statement.
    for i in range(8):
        cur.execute("SELECT customer FROM p3_orders WHERE id = %s AND paid = %s", (1, True))
        check(cur.fetchone(), ("ann",), f"prepared run {i}")
    cur.execute("SELECT id FROM p3_orders WHERE amount > %s AND placed < %s ORDER BY id",
                (decimal.Decimal("5"), datetime.datetime(2026, 1, 10)))
    check(cur.fetchall(), [(1,), (3,)], "numeric and timestamp parameters")

with conn.cursor(binary=True) as cur:
    cur.execute("SELECT * FROM p3_orders ORDER BY id")
    check(cur.fetchall(), rows, "binary results")
    cur.execute("SELECT customer, n, total FROM p3_totals ORDER BY customer")
    check(cur.fetchall(), [("ann", 2, decimal.Decimal("17.50")), ("bob", 1, decimal.Decimal("3.25"))], "binary view rows")

# Updates and deletes through parameters flow into the view.
conn.execute("UPDATE p3_orders SET amount = %s WHERE id = %s", (decimal.Decimal("1.50"), 2))
conn.execute("DELETE FROM p3_orders WHERE id = %s", (3,))
check(conn.execute("SELECT customer, n, total FROM p3_totals ORDER BY customer").fetchall(),
      [("ann", 1, decimal.Decimal("10.50")), ("bob", 1, decimal.Decimal("1.50"))], "view after changes")

# The empty query (SQLAlchemy's ping with psycopg).
conn.execute(";")

# COPY in and out through psycopg's copy API.
with conn.cursor() as cur:
    with cur.copy("COPY p3_orders (id, customer, amount) FROM STDIN") as copy:
        copy.write_row((10, "cora", decimal.Decimal("4.00")))
        copy.write_row((11, "tab\there", None))
    with cur.copy("COPY (SELECT id, customer, amount FROM p3_orders WHERE id >= 10 ORDER BY id) TO STDOUT") as copy:
        check(list(copy.rows()), [("10", "cora", "4.00"), ("11", "tab\there", None)], "copy out rows")
    try:
        with cur.copy("COPY p3_orders (id, amount) FROM STDIN") as copy:
            copy.write("12\t1.00\n13\tnot-a-number\n")
        raise AssertionError("bad COPY data accepted")
    except psycopg.errors.InvalidTextRepresentation as e:
        check("line 2" in str(e), True, f"line named in {e}")
    check(conn.execute("SELECT count(*) FROM p3_orders WHERE id >= 12").fetchone(), (0,), "failed copy committed nothing")
    conn.execute("DELETE FROM p3_orders WHERE id >= 10")

conn.close()

# Transactions: the connection opens a block; errors abort it.
conn = psycopg.connect(DSN)
with conn.cursor() as cur:
    cur.execute("SELECT count(*) FROM p3_orders")
    check(cur.fetchone(), (2,), "count in a block")
    check(conn.info.transaction_status, psycopg.pq.TransactionStatus.INTRANS, "in block")
    try:
        cur.execute("SELECT * FROM missing_table")
        raise AssertionError("no error for a missing table")
    except psycopg.errors.UndefinedTable:
        pass
    check(conn.info.transaction_status, psycopg.pq.TransactionStatus.INERROR, "aborted block")
conn.rollback()
# Nested transaction() uses savepoints.
with conn.transaction():
    try:
        with conn.transaction():
            conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero:
        pass
    check(conn.execute("SELECT 3").fetchone(), (3,), "after a rolled-back savepoint")

# Server cursors: DECLARE with a parameter, Describe of the cursor's
# portal, then FETCH FORWARD n.
with conn.transaction():
    with conn.cursor(name="p3_cursor") as cur:
        cur.itersize = 1
        cur.execute("SELECT id, customer FROM p3_orders WHERE id >= %s ORDER BY id", (1,))
        check([d.name for d in cur.description], ["id", "customer"], "server cursor description")
        check(cur.fetchone(), (1, "ann"), "first row")
        check(cur.fetchall(), [(2, "bob")], "remaining rows")
# SUBSCRIBE through a server cursor: the snapshot, then a change.
with conn.transaction():
    with conn.cursor(name="p3_changes") as cur:
        cur.execute("SUBSCRIBE TO p3_totals")
        check([d.name for d in cur.description], ["epoch", "weight", "customer", "n", "total"], "subscribe columns")
        snapshot = sorted((w, c, n, t) for _, w, c, n, t in cur.fetchmany(10))
        check(snapshot, [(1, "ann", 1, decimal.Decimal("10.50")), (1, "bob", 1, decimal.Decimal("1.50"))], "snapshot rows")
        with psycopg.connect(DSN, autocommit=True) as writer:
            writer.execute("INSERT INTO p3_orders (id, customer, amount) VALUES (20, 'bob', 2)")
        changes = sorted((w, c, n, t) for _, w, c, n, t in cur.fetchmany(10))
        check(changes, [(-1, "bob", 1, decimal.Decimal("1.50")), (1, "bob", 2, decimal.Decimal("3.50"))], "change rows")
conn.close()

conn = psycopg.connect(DSN, autocommit=True)
conn.execute("DROP MATERIALIZED VIEW p3_totals")
conn.execute("DROP TABLE p3_orders")
conn.close()
print("psycopg3 ok")
