// pgjdbc load through pgfunnel (tests/integration/test_prepared_drivers.py).
//
// THREADS threads, each with a connection of its own (prepareThreshold=1: every
// PreparedStatement becomes a named server-side statement, S_n, on its first execution),
// each running ITERATIONS rounds of parameterized queries over a few distinct statements,
// some in autocommit mode and some inside explicit transactions, checking every row.
//
// Usage: java -cp postgresql.jar:DIR PreparedLoad URL USER PASSWORD THREADS ITERATIONS
// Prints "PreparedLoad: threads=T queries=Q errors=E" last; exits 0 only when every thread
// finished and every result was right (E = 0).

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

public class PreparedLoad {
	static final ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();
	static final AtomicLong queries = new AtomicLong();

	static void check(boolean ok, String what) {
		if (!ok) {
			throw new IllegalStateException(what);
		}
	}

	static void run(String url, Properties props, int id, int iterations, CountDownLatch start)
			throws Exception {
		try (Connection conn = DriverManager.getConnection(url, props)) {
			start.countDown();
			start.await(60, TimeUnit.SECONDS);
			try (PreparedStatement mul = conn.prepareStatement("SELECT ?::int * 2, ?::text");
					PreparedStatement cat = conn.prepareStatement(
							"SELECT ?::text || '/' || ?::int, length(?::text)");
					PreparedStatement rng = conn.prepareStatement(
							"SELECT g, g * ?::int FROM generate_series(1, ?::int) AS g ORDER BY g")) {
				for (int j = 0; j < iterations; j++) {
					boolean tx = j % 5 == 4;
					if (tx) {
						conn.setAutoCommit(false);
					}
					int v = id * 100000 + j;
					String tag = "t" + id + "-" + j;

					mul.setInt(1, v);
					mul.setString(2, tag);
					try (ResultSet rs = mul.executeQuery()) {
						check(rs.next(), "mul: no row");
						check(rs.getInt(1) == v * 2, "mul: " + rs.getInt(1) + " != " + (v * 2));
						check(tag.equals(rs.getString(2)), "mul: " + rs.getString(2) + " != " + tag);
						check(!rs.next(), "mul: more than one row");
					}
					queries.incrementAndGet();

					cat.setString(1, tag);
					cat.setInt(2, j);
					cat.setString(3, tag);
					try (ResultSet rs = cat.executeQuery()) {
						check(rs.next(), "cat: no row");
						String want = tag + "/" + j;
						check(want.equals(rs.getString(1)), "cat: " + rs.getString(1) + " != " + want);
						check(rs.getInt(2) == tag.length(), "cat: length " + rs.getInt(2));
					}
					queries.incrementAndGet();

					if (j % 4 == 0) {
						int n = 1 + (id + j) % 7;
						rng.setInt(1, id);
						rng.setInt(2, n);
						try (ResultSet rs = rng.executeQuery()) {
							for (int g = 1; g <= n; g++) {
								check(rs.next(), "rng: " + (g - 1) + " rows, want " + n);
								check(rs.getInt(1) == g && rs.getInt(2) == g * id,
										"rng: row " + g + " = (" + rs.getInt(1) + ", " + rs.getInt(2) + ")");
							}
							check(!rs.next(), "rng: more than " + n + " rows");
						}
						queries.incrementAndGet();
					}

					if (tx) {
						conn.commit();
						conn.setAutoCommit(true);
					}
				}
			}
		}
	}

	public static void main(String[] args) throws Exception {
		if (args.length != 5) {
			System.err.println("usage: PreparedLoad URL USER PASSWORD THREADS ITERATIONS");
			System.exit(2);
		}
		String url = args[0];
		Properties props = new Properties();
		props.setProperty("user", args[1]);
		props.setProperty("password", args[2]);
		props.setProperty("prepareThreshold", "1");
		props.setProperty("connectTimeout", "10");
		props.setProperty("socketTimeout", "60");
		int threads = Integer.parseInt(args[3]);
		int iterations = Integer.parseInt(args[4]);

		CountDownLatch start = new CountDownLatch(threads);
		List<Thread> all = new ArrayList<>();
		AtomicLong finished = new AtomicLong();
		for (int i = 0; i < threads; i++) {
			final int id = i + 1;
			Thread t = new Thread(() -> {
				try {
					run(url, props, id, iterations, start);
					finished.incrementAndGet();
				} catch (Throwable e) {
					start.countDown();
					String state = e instanceof SQLException ? " [" + ((SQLException) e).getSQLState() + "]" : "";
					errors.add("thread " + id + ": " + e + state);
				}
			});
			all.add(t);
			t.start();
		}
		for (Thread t : all) {
			t.join(120000);
		}
		for (String e : errors) {
			System.out.println("ERROR " + e);
		}
		System.out.println("PreparedLoad: threads=" + threads + " finished=" + finished.get()
				+ " queries=" + queries.get() + " errors=" + errors.size());
		System.exit(errors.isEmpty() && finished.get() == threads ? 0 : 1);
	}
}
