//! Real PostgreSQL clients against a running server: psql's describe
//! commands, which read `pg_catalog` with the SQL psql itself sends, and
//! the Python drivers and SQLAlchemy, each running a script from
//! `tests/clients/` in the virtual environment `scripts/test.sh` prepares.

mod common;

use std::process::Command;

use common::TestServer;

/// Runs one psql meta-command and returns what it printed, failing on any
/// error message.
fn psql(server: &TestServer, command: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .arg(server.conn_str())
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", command])
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "psql is not installed ({e}); scripts/test.sh installs postgresql-client"
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    anyhow::ensure!(
        out.status.success() && !stderr.contains("ERROR") && !stdout.contains("ERROR"),
        "psql {command} failed:\n{stdout}\n{stderr}"
    );
    Ok(stdout)
}

/// The Python interpreter of virtual environment `env` (see
/// `scripts/test.sh`: `sa14` holds SQLAlchemy 1.4 with psycopg2, `sa2` and
/// `sa21` SQLAlchemy 2.0 and 2.1 with psycopg2 and psycopg 3, `superset`
/// Apache Superset 6.1).
fn python(env: &str) -> anyhow::Result<std::path::PathBuf> {
    let root = match std::env::var_os("MILLRACE_PYTHON_ENVS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            std::path::PathBuf::from(std::env::var("HOME")?).join(".cache/millrace-test/python")
        }
    };
    let python = root.join(env).join("bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: scripts/test.sh creates the Python client environments",
        python.display()
    );
    Ok(python)
}

/// Runs a client script from `tests/clients/` against `server`.
fn run_client(server: &TestServer, env: &str, script: &str, args: &[&str]) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let mut command = Command::new(python(env)?);
    command.arg(path).arg(server.port.to_string()).args(args);
    run_checked(command, &format!("{script} {args:?}"))
}

/// Runs a client program, which prints "... ok" when all its checks hold.
fn run_checked(mut command: Command, what: &str) -> anyhow::Result<()> {
    let out = command.output().map_err(|e| {
        anyhow::anyhow!("{what} could not start ({e}); scripts/test.sh installs the clients")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success() && stdout.contains(" ok"),
        "{what} failed:\n{stdout}\n{stderr}"
    );
    Ok(())
}

#[test]
fn psycopg2_simple_protocol_transactions_and_named_cursors() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    run_client(&server, "sa2", "psycopg2_client.py", &[])
}

#[test]
fn psycopg3_extended_protocol_binary_results_and_server_cursors() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    run_client(&server, "sa2", "psycopg3_client.py", &[])
}

#[test]
fn sqlalchemy_1_4_inspector_with_psycopg2() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    run_client(&server, "sa14", "sqlalchemy_client.py", &["psycopg2"])
}

#[test]
fn sqlalchemy_2_0_and_2_1_inspectors_with_psycopg2_and_psycopg3() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    run_client(&server, "sa2", "sqlalchemy_client.py", &["psycopg2"])?;
    run_client(&server, "sa2", "sqlalchemy_client.py", &["psycopg"])?;
    run_client(&server, "sa21", "sqlalchemy_client.py", &["psycopg2"])?;
    run_client(&server, "sa21", "sqlalchemy_client.py", &["psycopg"])
}

/// Apache Superset from PyPI, in its own environment (`scripts/test.sh`):
/// Millrace registered as a database, a dataset on a materialized view,
/// and a chart query through Superset's REST API.
#[tokio::test]
async fn superset_dataset_and_chart_on_a_materialized_view() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE superset_orders (id bigint PRIMARY KEY, customer varchar(20),
                                           amount numeric(10,2), placed timestamp);
             INSERT INTO superset_orders VALUES (1, 'ann', 10.50, '2026-01-01 10:00:00'),
               (2, 'bob', 3.25, '2026-01-02 10:00:00'), (3, 'ann', 7.00, '2026-01-03 10:00:00');
             CREATE MATERIALIZED VIEW superset_totals AS
               SELECT customer, count(*) AS n, sum(amount) AS total
               FROM superset_orders GROUP BY customer;",
        )
        .await?;
    run_client(&server, "superset", "superset_client.py", &[])
}

/// pgjdbc from Debian's `libpostgresql-jdbc-java`, run on Debian's JDK
/// (`scripts/test.sh` installs both); `MILLRACE_JDBC_JAR` names another jar.
#[test]
fn pgjdbc_prepared_statements_metadata_and_fetch_size() -> anyhow::Result<()> {
    let jar = std::env::var("MILLRACE_JDBC_JAR")
        .unwrap_or_else(|_| "/usr/share/java/postgresql.jar".to_string());
    anyhow::ensure!(
        std::path::Path::new(&jar).exists(),
        "{jar} is missing: scripts/test.sh installs libpostgresql-jdbc-java"
    );
    let server = TestServer::start()?;
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/JdbcClient.java");
    let mut java = Command::new("java");
    java.args(["-cp", &jar])
        .arg(source)
        .arg(server.port.to_string());
    run_checked(java, "JdbcClient (java)")
}

#[tokio::test]
async fn psql_describe_commands() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer varchar, amount numeric(10,2));
             CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 100;
             CREATE MATERIALIZED VIEW totals AS
               SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
             COMMENT ON VIEW big_orders IS 'Orders over 100';
             COMMENT ON COLUMN orders.customer IS 'Who ordered';
             CREATE SOURCE clicks (user_id bigint, ts timestamp) WITH (connector = 'datagen',
               datagen.rows.per.second = '1', datagen.rows.limit = '1');",
        )
        .await?;

    let all = psql(&server, "\\d")?;
    for line in [
        "public | big_orders | view              |",
        "public | orders     | table             |",
        "public | totals     | materialized view |",
    ] {
        anyhow::ensure!(all.contains(line), "\\d lacks {line:?}:\n{all}");
    }
    let tables = psql(&server, "\\dt")?;
    anyhow::ensure!(
        tables.contains("orders") && !tables.contains("totals"),
        "{tables}"
    );
    let views = psql(&server, "\\dv")?;
    anyhow::ensure!(
        views.contains("big_orders") && !views.contains("| orders "),
        "{views}"
    );
    let matviews = psql(&server, "\\dm")?;
    anyhow::ensure!(
        matviews.contains("totals") && matviews.contains("(1 row)"),
        "{matviews}"
    );
    let indexes = psql(&server, "\\di")?;
    anyhow::ensure!(indexes.contains("orders_pkey"), "{indexes}");
    // The verbose listings: sizes are not tracked and print empty.
    let tables_verbose = psql(&server, "\\dt+")?;
    anyhow::ensure!(
        tables_verbose.contains("public | orders | table") && tables_verbose.contains("heap"),
        "{tables_verbose}"
    );
    let matviews_verbose = psql(&server, "\\dm+")?;
    anyhow::ensure!(matviews_verbose.contains("totals"), "{matviews_verbose}");
    let indexes_verbose = psql(&server, "\\di+")?;
    anyhow::ensure!(
        indexes_verbose.contains("orders_pkey | index"),
        "{indexes_verbose}"
    );
    let databases_verbose = psql(&server, "\\l+")?;
    anyhow::ensure!(databases_verbose.contains("UTF-8"), "{databases_verbose}");
    let functions = psql(&server, "\\df")?;
    anyhow::ensure!(functions.contains("(0 rows)"), "{functions}");

    let view = psql(&server, "\\d+ big_orders")?;
    for needle in [
        "View \"public.big_orders\"",
        "id     | bigint",
        "amount | numeric(10,2)",
        "View definition:",
        "SELECT id, amount FROM orders WHERE amount > 100;",
    ] {
        anyhow::ensure!(
            view.contains(needle),
            "\\d+ big_orders lacks {needle:?}:\n{view}"
        );
    }
    let described = psql(&server, "\\d big_orders")?;
    anyhow::ensure!(
        described.contains("View \"public.big_orders\""),
        "{described}"
    );

    // A table: columns, key index, and (verbose) storage and comments.
    let table = psql(&server, "\\d orders")?;
    for needle in [
        "Table \"public.orders\"",
        "id       | bigint            |           | not null |",
        "amount   | numeric(10,2)     |",
        "Indexes:",
        "\"orders_pkey\" PRIMARY KEY, btree (id)",
    ] {
        anyhow::ensure!(
            table.contains(needle),
            "\\d orders lacks {needle:?}:\n{table}"
        );
    }
    let table_verbose = psql(&server, "\\d+ orders")?;
    for needle in ["Storage", "Who ordered", "Access method: heap"] {
        anyhow::ensure!(
            table_verbose.contains(needle),
            "\\d+ orders lacks {needle:?}:\n{table_verbose}"
        );
    }
    let matview = psql(&server, "\\d+ totals")?;
    for needle in [
        "Materialized view \"public.totals\"",
        "View definition:",
        "Access method: heap",
    ] {
        anyhow::ensure!(
            matview.contains(needle),
            "\\d+ totals lacks {needle:?}:\n{matview}"
        );
    }
    anyhow::ensure!(!matview.contains("Replica Identity"), "{matview}");
    let index = psql(&server, "\\d+ orders_pkey")?;
    for needle in [
        "Index \"public.orders_pkey\"",
        "id     | bigint | yes  | id",
        "primary key, btree, for table \"public.orders\"",
    ] {
        anyhow::ensure!(
            index.contains(needle),
            "\\d+ orders_pkey lacks {needle:?}:\n{index}"
        );
    }
    // A source is a foreign table of its connector's server.
    for command in ["\\d clicks", "\\d+ clicks"] {
        let source = psql(&server, command)?;
        for needle in [
            "Foreign table \"public.clicks\"",
            "user_id | bigint",
            "Server: datagen",
            "FDW options: (connector 'datagen', \"datagen.rows.limit\" '1'",
        ] {
            anyhow::ensure!(
                source.contains(needle),
                "{command} lacks {needle:?}:\n{source}"
            );
        }
    }
    let foreign_tables = psql(&server, "\\det")?;
    anyhow::ensure!(
        foreign_tables.contains("public | clicks | datagen"),
        "{foreign_tables}"
    );

    let databases = psql(&server, "\\l")?;
    anyhow::ensure!(databases.contains("millrace"), "{databases}");
    let schemas = psql(&server, "\\dn")?;
    anyhow::ensure!(
        schemas.contains("public") && schemas.contains("millrace_catalog"),
        "{schemas}"
    );
    Ok(())
}

/// OID, relkind, table comment and second column's comment of a row.
type RelationFacts = (i64, String, Option<String>, Option<String>);

fn relation_facts(r: &tokio_postgres::Row) -> RelationFacts {
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// OIDs and comments are part of the catalog: a restart keeps them, so a
/// client that cached an OID (psql re-sends them as literals) still finds
/// the same relation.
#[tokio::test]
async fn catalog_oids_and_comments_survive_a_restart() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let temp = server.take_temp();
    let dir = server.data_dir().to_path_buf();
    let query = "SELECT c.oid::bigint, c.relkind, obj_description(c.oid, 'pg_class'),
                        col_description(c.oid, 2)
                 FROM pg_catalog.pg_class c WHERE c.relname = $1";
    let before = {
        let client = server.connect().await?;
        client
            .batch_execute(
                "CREATE TABLE first (id bigint);
                 CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(10,2));
                 CREATE MATERIALIZED VIEW n AS SELECT count(*) AS c FROM orders;
                 COMMENT ON TABLE orders IS 'Every order';
                 COMMENT ON COLUMN orders.amount IS 'In euros';
                 DROP TABLE first;",
            )
            .await?;
        let mut rows = Vec::new();
        for name in ["orders", "n"] {
            rows.push(client.query_one(query, &[&name]).await?);
        }
        rows.iter().map(relation_facts).collect::<Vec<_>>()
    };
    assert_eq!(before[0].1, "r");
    assert_eq!(before[0].2.as_deref(), Some("Every order"));
    assert_eq!(before[0].3.as_deref(), Some("In euros"));
    assert_eq!(before[1].1, "m");
    assert_ne!(before[0].0, before[1].0);
    let status = server.stop()?;
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");

    let server = TestServer::start_on(&dir, &[])?;
    let client = server.connect().await?;
    for (name, expected) in ["orders", "n"].into_iter().zip(&before) {
        let after = relation_facts(&client.query_one(query, &[&name]).await?);
        assert_eq!(&after, expected, "{name} after a restart");
    }
    drop(temp);
    Ok(())
}

/// TLS with a certificate and key given at start: psql with
/// `sslmode=require` gets an encrypted session; a server without them
/// refuses TLS, and a missing key file stops the server at start.
#[test]
fn tls_with_sslmode_require() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("openssl is not installed ({e}); scripts/test.sh installs it")
        })?;
    anyhow::ensure!(made.status.success(), "openssl failed: {made:?}");
    let data = tempfile::tempdir()?;
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let server = TestServer::start_on(
        data.path(),
        &["--tls-cert", &cert_arg, "--tls-key", &key_arg],
    )?;
    let secure = format!("{} sslmode=require", server.conn_str());
    let out = Command::new("psql")
        .arg(&secure)
        .args(["-X", "-c", "\\conninfo", "-c", "SELECT 40 + 2 AS answer"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains("SSL connection") && stdout.contains("42"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain connections still work when TLS is offered.
    psql(&server, "SELECT 1")?;

    let plain = TestServer::start()?;
    let out = Command::new("psql")
        .arg(format!("{} sslmode=require", plain.conn_str()))
        .args(["-X", "-c", "SELECT 1"])
        .output()?;
    anyhow::ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("does not support SSL"),
        "{out:?}"
    );

    let missing = dir.path().join("missing.key");
    let missing_arg = missing.display().to_string();
    let refused = TestServer::start_on(
        tempfile::tempdir()?.path(),
        &["--tls-cert", &cert_arg, "--tls-key", &missing_arg],
    );
    anyhow::ensure!(refused.is_err(), "a server started without its TLS key");
    Ok(())
}

/// Runs psql with a password; returns (success, stdout, stderr).
fn psql_as(
    server: &TestServer,
    user: &str,
    password: &str,
    sql: &str,
) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=dev",
            server.port
        ))
        .args(["-X", "-At", "-c", sql])
        .env("PGPASSWORD", password)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

/// The authentication request the server answers a startup message with:
/// 3 for a cleartext password, 5 for MD5, 10 for SASL (SCRAM).
fn auth_request(server: &TestServer) -> anyhow::Result<i32> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", server.port))?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", "millrace"), ("database", "dev")] {
        body.extend(k.as_bytes());
        body.push(0);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = i32::try_from(body.len() + 4)?.to_be_bytes().to_vec();
    message.extend(body);
    socket.write_all(&message)?;
    let mut header = [0u8; 9];
    socket.read_exact(&mut header)?;
    anyhow::ensure!(
        header[0] == b'R',
        "not an authentication request: {header:?}"
    );
    Ok(i32::from_be_bytes([
        header[5], header[6], header[7], header[8],
    ]))
}

/// SCRAM-SHA-256 passwords: the start-up password of `millrace`, users made
/// with `CREATE USER ... PASSWORD`, wrong passwords and unknown users
/// refused, users kept across a restart and gone after `DROP USER`;
/// cleartext passwords only with `--auth password`; and a
/// server that requires passwords refuses to start when nobody has one.
#[test]
fn scram_password_authentication() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let args = ["--auth", "scram"];
    let server =
        TestServer::start_with_env(data.path(), &args, &[("MILLRACE_PASSWORD", "s3cret")])?;
    let (ok, out, err) = psql_as(
        &server,
        "millrace",
        "s3cret",
        "CREATE USER alice WITH PASSWORD 'wonder'",
    )?;
    anyhow::ensure!(ok && out.contains("CREATE ROLE"), "{out}{err}");
    let (ok, out, err) = psql_as(&server, "alice", "wonder", "SELECT session_user")?;
    anyhow::ensure!(ok && out.trim() == "alice", "{out}{err}");
    let (ok, _, err) = psql_as(&server, "alice", "wrong", "SELECT 1")?;
    anyhow::ensure!(!ok && err.contains("authentication failed"), "{err}");
    let (ok, _, err) = psql_as(&server, "nobody", "x", "SELECT 1")?;
    anyhow::ensure!(!ok && err.contains("authentication failed"), "{err}");
    // A user that is not a superuser reads only what it is granted.
    let setup = "CREATE TABLE orders (id bigint PRIMARY KEY, amount bigint); \
                 INSERT INTO orders VALUES (1, 10), (2, 5); \
                 CREATE MATERIALIZED VIEW total AS SELECT sum(amount) AS s FROM orders; \
                 GRANT SELECT ON total TO alice";
    let (ok, out, err) = psql_as(&server, "millrace", "s3cret", setup)?;
    anyhow::ensure!(ok, "{out}{err}");
    let (ok, out, err) = psql_as(&server, "alice", "wonder", "SELECT s FROM total")?;
    anyhow::ensure!(ok && out.trim() == "15", "{out}{err}");
    let (ok, _, err) = psql_as(&server, "alice", "wonder", "SELECT * FROM orders")?;
    anyhow::ensure!(
        !ok && err.contains("permission denied for relation orders"),
        "{err}"
    );
    let (ok, _, err) = psql_as(
        &server,
        "alice",
        "wonder",
        "INSERT INTO orders VALUES (3, 1)",
    )?;
    anyhow::ensure!(!ok && err.contains("permission denied"), "{err}");
    let catalog = "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'orders'";
    let (ok, out, err) = psql_as(&server, "alice", "wonder", catalog)?;
    anyhow::ensure!(
        ok && out.trim() == "1",
        "catalogs stay readable: {out}{err}"
    );
    let (ok, out, err) = psql_as(
        &server,
        "millrace",
        "s3cret",
        "REVOKE SELECT ON total FROM alice",
    )?;
    anyhow::ensure!(ok, "{out}{err}");
    let (ok, _, err) = psql_as(&server, "alice", "wonder", "SELECT s FROM total")?;
    anyhow::ensure!(!ok && err.contains("permission denied"), "{err}");
    let all = "GRANT SELECT ON ALL TABLES IN SCHEMA public TO alice";
    let (ok, out, err) = psql_as(&server, "millrace", "s3cret", all)?;
    anyhow::ensure!(ok, "{out}{err}");
    let (ok, out, err) = psql_as(&server, "alice", "wonder", "SELECT count(*) FROM orders")?;
    anyhow::ensure!(ok && out.trim() == "2", "{out}{err}");

    let (ok, out, err) = psql_as(
        &server,
        "millrace",
        "s3cret",
        "ALTER USER alice WITH PASSWORD 'land'",
    )?;
    anyhow::ensure!(ok, "{out}{err}");
    server.stop()?;

    // Users persist; the old password no longer works.
    let server = TestServer::start_on(data.path(), &args)?;
    let (ok, _, err) = psql_as(&server, "alice", "wonder", "SELECT 1")?;
    anyhow::ensure!(!ok, "old password accepted: {err}");
    let (ok, out, err) = psql_as(&server, "alice", "land", "SELECT 1")?;
    anyhow::ensure!(ok && out.trim() == "1", "{out}{err}");
    anyhow::ensure!(
        auth_request(&server)? == 10,
        "scram asks for SASL, never a cleartext or MD5 password"
    );
    server.stop()?;

    // Cleartext passwords only when asked for, checked against the same
    // verifiers.
    let server = TestServer::start_on(data.path(), &["--auth", "password"])?;
    anyhow::ensure!(auth_request(&server)? == 3, "cleartext password asked for");
    let (ok, out, err) = psql_as(&server, "alice", "land", "SELECT session_user")?;
    anyhow::ensure!(ok && out.trim() == "alice", "{out}{err}");
    let (ok, _, err) = psql_as(&server, "alice", "lan", "SELECT 1")?;
    anyhow::ensure!(!ok && err.contains("authentication failed"), "{err}");
    let (ok, _, err) = psql_as(&server, "alice", "land", "SELECT * FROM orders LIMIT 0")?;
    anyhow::ensure!(ok, "granted reads still work: {err}");
    server.stop()?;

    let server = TestServer::start_on(data.path(), &args)?;
    let (ok, _, err) = psql_as(&server, "millrace", "s3cret", "DROP USER alice")?;
    anyhow::ensure!(ok, "{err}");
    let (ok, _, _) = psql_as(&server, "alice", "land", "SELECT 1")?;
    anyhow::ensure!(!ok, "a dropped user logged in");
    let (ok, _, err) = psql_as(&server, "millrace", "s3cret", "DROP USER alice")?;
    anyhow::ensure!(!ok && err.contains("does not exist"), "{err}");
    server.stop()?;

    let empty = tempfile::tempdir()?;
    anyhow::ensure!(
        TestServer::start_on(empty.path(), &args).is_err(),
        "a server requiring passwords started with no user able to log in"
    );
    Ok(())
}
