// pgjdbc through optlock: prepared statements (server-side after a few executions), a batch, and
// the conflict error as JDBC reports it. Usage: java -cp postgresql.jar:. Check JDBC-URL
import java.sql.*;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class Check {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        try (Connection setup = DriverManager.getConnection(url, "postgres", "")) {
            try (Statement st = setup.createStatement()) {
                st.execute("CREATE TABLE invoice (id int PRIMARY KEY, total numeric NOT NULL, version bigint NOT NULL DEFAULT 0)");
                st.execute("INSERT INTO invoice (id, total) SELECT g, 10 FROM generate_series(1, 5) g");
            }
        }
        Connection a = DriverManager.getConnection(url + "&prepareThreshold=1", "postgres", "");
        Connection b = DriverManager.getConnection(url, "postgres", "");
        PreparedStatement read = a.prepareStatement("SELECT id, total, version FROM invoice WHERE id = ?");
        PreparedStatement write = a.prepareStatement("UPDATE invoice SET total = total + ? WHERE id = ?");
        // Own writes never conflict with themselves, named server-side statements included.
        read.setInt(1, 1);
        try (ResultSet rs = read.executeQuery()) { check(rs.next() && rs.getLong(3) == 0, "read"); }
        for (int i = 0; i < 4; i++) {
            write.setInt(1, 1);
            write.setInt(2, 1);
            int n = write.executeUpdate();
            check(n == 1, "own write " + i + ": " + n);
        }
        // Another session changes the row: the next write is a conflict.
        try (Statement st = b.createStatement()) {
            st.executeQuery("SELECT id, version FROM invoice WHERE id = 1").close();
            check(st.executeUpdate("UPDATE invoice SET total = 0 WHERE id = 1") == 1, "b write");
        }
        write.setInt(1, 1);
        write.setInt(2, 1);
        try {
            write.executeUpdate();
            throw new AssertionError("expected a conflict");
        } catch (PSQLException e) {
            check("40001".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            ServerErrorMessage m = e.getServerErrorMessage();
            check("optlock".equals(m.getConstraint()), "constraint " + m.getConstraint());
            check("invoice".equals(m.getTable()) && "public".equals(m.getSchema()), "table");
            check(m.getMessage().equals("optimistic lock conflict on public.invoice (id)=(1)"), m.getMessage());
        }
        // A batch of keyed writes after fresh reads: exact update counts.
        try (Statement st = a.createStatement()) {
            st.executeQuery("SELECT id, version FROM invoice WHERE id IN (2, 3)").close();
        }
        PreparedStatement batch = a.prepareStatement("UPDATE invoice SET total = ? WHERE id = ?");
        for (int id = 2; id <= 3; id++) {
            batch.setInt(1, id * 100);
            batch.setInt(2, id);
            batch.addBatch();
        }
        int[] counts = batch.executeBatch();
        check(counts.length == 2 && counts[0] == 1 && counts[1] == 1, "batch counts");
        a.close();
        b.close();
        System.out.println("ok");
    }
}
