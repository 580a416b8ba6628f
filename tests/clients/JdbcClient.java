// pgjdbc against a running Millrace: prepared statements past the
// server-prepare threshold (binary results on cached statements),
// DatabaseMetaData, setFetchSize (portals suspended and resumed across
// Sync inside a transaction), transactions, and a materialized view that
// follows inserts, updates and deletes.
//
// Usage: java -cp postgresql.jar JdbcClient.java PORT. Exits non-zero on
// the first failed check.
import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

public class JdbcClient {
    static void check(Object got, Object want, String what) {
        if (!Objects.equals(got, want)) {
            throw new AssertionError(what + ": got " + got + ", want " + want);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/dev?user=millrace";
        try (Connection conn = DriverManager.getConnection(url)) {
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseMajorVersion(), 16, "server major version");
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE TABLE jdbc_orders (id BIGINT PRIMARY KEY, customer VARCHAR(20) NOT NULL, "
                        + "amount NUMERIC(10,2), placed TIMESTAMP, paid BOOLEAN, qty INTEGER)");
                st.execute("COMMENT ON TABLE jdbc_orders IS 'orders from JDBC'");
                st.execute("CREATE MATERIALIZED VIEW jdbc_totals AS SELECT customer, count(*) AS n, "
                        + "sum(amount) AS total FROM jdbc_orders GROUP BY customer");
            }
            // Ten executions: pgjdbc switches to a named server-side
            // statement after five, and then asks for binary results.
            try (PreparedStatement ins = conn.prepareStatement(
                    "INSERT INTO jdbc_orders VALUES (?, ?, ?, ?, ?, ?)")) {
                for (int i = 1; i <= 10; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, i % 2 == 0 ? "even" : "odd");
                    ins.setBigDecimal(3, new BigDecimal(i + ".50"));
                    ins.setTimestamp(4, Timestamp.valueOf("2026-01-0" + (i % 9 + 1) + " 10:00:00"));
                    ins.setBoolean(5, i % 3 == 0);
                    ins.setInt(6, i);
                    check(ins.executeUpdate(), 1, "inserted row " + i);
                }
            }
            try (PreparedStatement q = conn.prepareStatement(
                    "SELECT customer, amount, placed, paid, qty FROM jdbc_orders WHERE id = ?")) {
                for (int i = 1; i <= 10; i++) {
                    q.setLong(1, i);
                    try (ResultSet rs = q.executeQuery()) {
                        check(rs.next(), true, "row " + i);
                        check(rs.getString(1), i % 2 == 0 ? "even" : "odd", "customer " + i);
                        check(rs.getBigDecimal(2), new BigDecimal(i + ".50"), "amount " + i);
                        check(rs.getTimestamp(3), Timestamp.valueOf("2026-01-0" + (i % 9 + 1) + " 10:00:00"), "placed " + i);
                        check(rs.getBoolean(4), i % 3 == 0, "paid " + i);
                        check(rs.getInt(5), i, "qty " + i);
                        check(rs.next(), false, "one row " + i);
                    }
                }
            }
            try (PreparedStatement up = conn.prepareStatement("UPDATE jdbc_orders SET amount = ? WHERE id = ?");
                 PreparedStatement del = conn.prepareStatement("DELETE FROM jdbc_orders WHERE id = ?")) {
                up.setBigDecimal(1, new BigDecimal("100.00"));
                up.setLong(2, 1);
                check(up.executeUpdate(), 1, "updated");
                del.setLong(1, 2);
                check(del.executeUpdate(), 1, "deleted");
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT customer, n, total FROM jdbc_totals ORDER BY customer")) {
                List<String> rows = new ArrayList<>();
                while (rs.next()) {
                    rows.add(rs.getString(1) + " " + rs.getLong(2) + " " + rs.getBigDecimal(3));
                }
                // even: 4,6,8,10 -> 4.5+6.5+8.5+10.5; odd: 1(100.00),3,5,7,9
                check(rows, List.of("even 4 30.00", "odd 5 126.00"), "view rows");
            }

            // DatabaseMetaData, as DBeaver and BI tools call it.
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
            }
            check(schemas.contains("public"), true, "schemas " + schemas);
            Map<String, String> tables = new TreeMap<>();
            try (ResultSet rs = meta.getTables(null, "public", "jdbc%", new String[] {"TABLE", "VIEW", "MATERIALIZED VIEW"})) {
                while (rs.next()) tables.put(rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE"));
            }
            check(tables, Map.of("jdbc_orders", "TABLE", "jdbc_totals", "MATERIALIZED VIEW"), "tables");
            try (ResultSet rs = meta.getTables(null, "public", "jdbc_orders", null)) {
                check(rs.next(), true, "table row");
                check(rs.getString("REMARKS"), "orders from JDBC", "table comment");
            }
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "public", "jdbc_orders", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":"
                            + rs.getInt("COLUMN_SIZE") + ":" + rs.getString("IS_NULLABLE"));
                }
            }
            check(columns, List.of("id:int8:19:NO", "customer:varchar:20:NO", "amount:numeric:10:YES",
                    "placed:timestamp:29:YES", "paid:bool:1:YES", "qty:int4:10:YES"), "columns");
            List<String> keys = new ArrayList<>();
            try (ResultSet rs = meta.getPrimaryKeys(null, "public", "jdbc_orders")) {
                while (rs.next()) keys.add(rs.getString("COLUMN_NAME") + "@" + rs.getString("PK_NAME"));
            }
            check(keys, List.of("id@jdbc_orders_pkey"), "primary key");
            try (ResultSet rs = meta.getImportedKeys(null, "public", "jdbc_orders")) {
                check(rs.next(), false, "no foreign keys");
            }
            List<String> indexes = new ArrayList<>();
            try (ResultSet rs = meta.getIndexInfo(null, "public", "jdbc_orders", false, false)) {
                while (rs.next()) indexes.add(rs.getString("INDEX_NAME") + ":" + rs.getString("COLUMN_NAME"));
            }
            check(indexes, List.of("jdbc_orders_pkey:id"), "indexes");

            // setFetchSize in a transaction: a named portal fetched a few rows
            // at a time, kept across Sync.
            conn.setAutoCommit(false);
            try (PreparedStatement q = conn.prepareStatement("SELECT id FROM jdbc_orders ORDER BY id")) {
                q.setFetchSize(3);
                List<Long> ids = new ArrayList<>();
                try (ResultSet rs = q.executeQuery()) {
                    while (rs.next()) ids.add(rs.getLong(1));
                }
                check(ids, List.of(1L, 3L, 4L, 5L, 6L, 7L, 8L, 9L, 10L), "fetched in batches");
            }
            // An error aborts the transaction until rollback.
            try (Statement st = conn.createStatement()) {
                try {
                    st.executeQuery("SELECT * FROM no_such_table");
                    throw new AssertionError("no error for a missing table");
                } catch (SQLException e) {
                    check(e.getSQLState(), "42P01", "missing table state");
                }
                try {
                    st.executeQuery("SELECT 1");
                    throw new AssertionError("aborted transaction accepted a statement");
                } catch (SQLException e) {
                    check(e.getSQLState(), "25P02", "aborted transaction state");
                }
            }
            conn.rollback();
            conn.setAutoCommit(true);
            try (Statement st = conn.createStatement()) {
                st.execute("DROP MATERIALIZED VIEW jdbc_totals");
                st.execute("DROP TABLE jdbc_orders");
            }
        }
        System.out.println("jdbc ok");
    }
}
