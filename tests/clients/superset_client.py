"""Apache Superset against a running Millrace: register Millrace as a
database, list its schemas and tables, create a dataset on a materialized
view, and run a chart query through Superset's REST API.

Usage: python superset_client.py MILLRACE_PORT. Superset runs from this
interpreter's environment with its own SQLite metadata database in a
temporary directory, on a free loopback port, and is stopped at the end.
Exits non-zero on the first failed check."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import requests

MILLRACE_PORT = int(sys.argv[1])
BIN = os.path.dirname(sys.executable)


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


work = tempfile.mkdtemp(prefix="millrace-superset-")
config = os.path.join(work, "superset_config.py")
with open(config, "w") as f:
    f.write(
        "SECRET_KEY = 'millrace-test-only-secret-key-0123456789'\n"
        f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{work}/superset.db'\n"
        "WTF_CSRF_ENABLED = False\n"
        "FEATURE_FLAGS = {}\n"
    )
env = dict(os.environ, SUPERSET_CONFIG_PATH=config, FLASK_APP="superset", PYTHONUNBUFFERED="1")
log = open(os.path.join(work, "superset.log"), "w")


def superset(*args):
    subprocess.run([os.path.join(BIN, "superset"), *args], env=env, check=True, stdout=log, stderr=log)


superset("db", "upgrade")
superset("fab", "create-admin", "--username", "admin", "--firstname", "A", "--lastname", "Dmin",
         "--email", "admin@example.com", "--password", "admin")
superset("init")

port = free_port()
server = subprocess.Popen(
    [os.path.join(BIN, "superset"), "run", "-h", "127.0.0.1", "-p", str(port), "--with-threads"],
    env=env, stdout=log, stderr=log,
)
base = f"http://127.0.0.1:{port}"
try:
    for _ in range(120):
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if server.poll() is not None:
            log.flush()
            raise AssertionError("superset exited at start:\n" + open(log.name).read()[-4000:])
        time.sleep(1)
    http = requests.Session()
    token = http.post(f"{base}/api/v1/security/login", json={
        "username": "admin", "password": "admin", "provider": "db", "refresh": True,
    }, timeout=60).json()["access_token"]
    http.headers["Authorization"] = f"Bearer {token}"

    uri = f"postgresql+psycopg2://millrace@127.0.0.1:{MILLRACE_PORT}/dev"
    r = http.post(f"{base}/api/v1/database/test_connection/", json={
        "database_name": "millrace", "sqlalchemy_uri": uri, "engine": "postgresql",
    }, timeout=120)
    check(r.status_code, 200, f"test connection: {r.text}")
    r = http.post(f"{base}/api/v1/database/", json={
        "database_name": "millrace", "sqlalchemy_uri": uri, "expose_in_sqllab": True,
    }, timeout=120)
    check(r.status_code, 201, f"create database: {r.text}")
    database = r.json()["id"]

    r = http.get(f"{base}/api/v1/database/{database}/schemas/", timeout=120)
    check("public" in r.json().get("result", []), True, f"schemas: {r.text}")
    r = http.get(f"{base}/api/v1/database/{database}/tables/?q=(schema_name:public)", timeout=120)
    names = {t["value"]: t["type"] for t in r.json().get("result", [])}
    check(names.get("superset_orders"), "table", f"tables: {r.text}")
    check(names.get("superset_totals"), "view", f"materialized view listed as a view: {r.text}")

    r = http.post(f"{base}/api/v1/dataset/", json={
        "database": database, "schema": "public", "table_name": "superset_totals",
    }, timeout=120)
    check(r.status_code, 201, f"create dataset: {r.text}")
    dataset = r.json()["id"]
    r = http.get(f"{base}/api/v1/dataset/{dataset}", timeout=120)
    columns = {c["column_name"]: c["type"] for c in r.json()["result"]["columns"]}
    check(sorted(columns), ["customer", "n", "total"], f"dataset columns: {r.text}")

    # A bar chart's query: total per customer, largest first.
    r = http.post(f"{base}/api/v1/chart/data", json={
        "datasource": {"id": dataset, "type": "table"},
        "queries": [{
            "columns": ["customer"],
            "metrics": [{
                "expressionType": "SIMPLE", "column": {"column_name": "total"},
                "aggregate": "SUM", "label": "revenue",
            }],
            "orderby": [[{
                "expressionType": "SIMPLE", "column": {"column_name": "total"},
                "aggregate": "SUM", "label": "revenue",
            }, False]],
            "row_limit": 100,
        }],
        "result_format": "json", "result_type": "full",
    }, timeout=120)
    check(r.status_code, 200, f"chart data: {r.text}")
    rows = r.json()["result"][0]["data"]
    check([(row["customer"], float(row["revenue"])) for row in rows],
          [("ann", 17.5), ("bob", 3.25)], "chart rows")

    # The same chart saved, as a user would.
    r = http.post(f"{base}/api/v1/chart/", json={
        "slice_name": "Revenue by customer", "viz_type": "table",
        "datasource_id": dataset, "datasource_type": "table",
        "params": '{"groupby": ["customer"], "metrics": ["count"]}',
    }, timeout=120)
    check(r.status_code, 201, f"save chart: {r.text}")
finally:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
    if os.environ.get("MILLRACE_KEEP_SUPERSET_LOG") is None:
        shutil.rmtree(work, ignore_errors=True)
print("superset ok")
