"""SQLAlchemy (1.4 or 2.x) against a running Millrace: the dialect's
connect-time checks, the inspector calls Superset makes (schemas, tables,
views, columns with known types, primary keys, indexes, comments), table
reflection and a LIMIT query through the engine.

Usage: python sqlalchemy_client.py PORT DRIVER, DRIVER being psycopg2 or
psycopg. Exits non-zero on the first failed check."""
import sys

import sqlalchemy
from sqlalchemy import MetaData, Table, create_engine, inspect, text, types

PORT = int(sys.argv[1])
DRIVER = sys.argv[2]
engine = create_engine(f"postgresql+{DRIVER}://millrace@127.0.0.1:{PORT}/dev")
SA2 = sqlalchemy.__version__.startswith("2")
SUFFIX = f"{DRIVER}_{''.join(sqlalchemy.__version__.split('.')[:2])}".replace("psycopg", "pg")


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


orders = f"sa_orders_{SUFFIX}"
totals = f"sa_totals_{SUFFIX}"
recent = f"sa_recent_{SUFFIX}"
with engine.connect() as conn:
    # dialect.initialize ran on connect: server version parsed from version().
    check(engine.dialect.server_version_info[:1], (16,), "server version seen by the dialect")
    conn.execute(text(
        f"CREATE TABLE {orders} (id BIGINT PRIMARY KEY, customer VARCHAR(50) NOT NULL, "
        "amount NUMERIC(10,2), placed TIMESTAMP, placed_tz TIMESTAMPTZ, paid BOOLEAN, "
        "ratio DOUBLE PRECISION, qty INTEGER, small SMALLINT, day DATE, note TEXT)"
    ))
    conn.execute(text(f"COMMENT ON TABLE {orders} IS 'one row per order'"))
    conn.execute(text(f"COMMENT ON COLUMN {orders}.amount IS 'in euros'"))
    conn.execute(text(f"INSERT INTO {orders} (id, customer, amount, qty) VALUES (1, 'ann', 10.50, 2), (2, 'bob', 3.25, 1), (3, 'ann', 7.00, 5)"))
    conn.execute(text(
        f"CREATE MATERIALIZED VIEW {totals} AS SELECT customer, count(*) AS n, sum(amount) AS total "
        f"FROM {orders} GROUP BY customer"
    ))
    conn.execute(text(f"CREATE VIEW {recent} AS SELECT id, customer FROM {orders} WHERE id > 1"))
    if hasattr(conn, "commit"):
        conn.commit()

insp = inspect(engine)
check("public" in insp.get_schema_names(), True, "public schema listed")
check(orders in insp.get_table_names(), True, "table listed")
views = insp.get_view_names()
check(recent in views, True, "view listed")
if SA2:
    check(totals in insp.get_materialized_view_names(), True, "materialized view listed")
else:
    check(totals in views, True, "materialized view listed among views")
check(orders in insp.get_table_names(), True, "table listed")
insp.get_foreign_table_names()

columns = {c["name"]: c for c in insp.get_columns(orders)}
check(list(columns), ["id", "customer", "amount", "placed", "placed_tz", "paid", "ratio", "qty", "small", "day", "note"], "columns in order")
for name, col in columns.items():
    if isinstance(col["type"], types.NullType):
        raise AssertionError(f"column {name} has an unknown type")
check(str(columns["customer"]["type"]), "VARCHAR(50)", "varchar length")
check(str(columns["amount"]["type"]), "NUMERIC(10, 2)", "numeric precision")
check(columns["customer"]["nullable"], False, "NOT NULL")
check(columns["id"]["nullable"], False, "primary key column NOT NULL")
check(columns["amount"]["comment"], "in euros", "column comment")
check(type(columns["placed_tz"]["type"]).__name__, "TIMESTAMP", "timestamptz type")
check(columns["placed_tz"]["type"].timezone, True, "timestamptz has a time zone")
check(insp.get_pk_constraint(orders)["constrained_columns"], ["id"], "primary key")
check(insp.get_pk_constraint(orders)["name"], f"{orders}_pkey", "primary key name")
check(insp.get_foreign_keys(orders), [], "no foreign keys")
check(insp.get_indexes(orders), [], "no secondary indexes")
check(insp.get_unique_constraints(orders), [], "no unique constraints")
check(insp.get_table_comment(orders)["text"], "one row per order", "table comment")
check(insp.has_table(orders), True, "has_table")
check([c["name"] for c in insp.get_columns(totals)], ["customer", "n", "total"], "view columns")

table = Table(orders, MetaData(), autoload_with=engine)
check(len(table.columns), 11, "reflected columns")
with engine.connect() as conn:
    rows = conn.execute(text(f"SELECT customer, n, total FROM {totals} ORDER BY customer LIMIT 100")).fetchall()
    check([tuple(r) for r in rows], [("ann", 2, __import__("decimal").Decimal("17.50")), ("bob", 1, __import__("decimal").Decimal("3.25"))], "LIMIT 100 through the engine")
    rows = conn.execute(table.select().where(table.c.id == 2)).fetchall()
    check([r.customer for r in rows], ["bob"], "core select with a parameter")
    conn.execute(text(f"DROP VIEW {recent}"))
    conn.execute(text(f"DROP MATERIALIZED VIEW {totals}"))
    conn.execute(text(f"DROP TABLE {orders}"))
    if hasattr(conn, "commit"):
        conn.commit()
print(f"sqlalchemy {sqlalchemy.__version__} with {DRIVER} ok")
