"""psycopg 3 through optlock: queries, COPY, a pipeline, and the conflict error as a driver sees it.

Usage: python3 psycopg_check.py CONNINFO   (prints "ok" and exits 0 when every check passes)
"""
import sys

import psycopg
from psycopg import errors

dsn = sys.argv[1]

with psycopg.connect(dsn, autocommit=True) as setup:
    setup.execute(
        "CREATE TABLE invoice (id int PRIMARY KEY, total numeric NOT NULL, version bigint NOT NULL DEFAULT 0)"
    )
    with setup.cursor().copy("COPY invoice (id, total) FROM STDIN") as copy:
        for i in range(1, 6):
            copy.write_row((i, 10))
    assert setup.execute("SELECT count(*) FROM invoice").fetchone()[0] == 5

a = psycopg.connect(dsn, autocommit=True)
b = psycopg.connect(dsn, autocommit=True)

# Parameters are bound server-side (extended protocol); rows come back as text.
row = a.execute("SELECT id, total, version FROM invoice WHERE id = %s", (1,)).fetchone()
assert row[0] == 1 and row[2] == 0, row
b.execute("SELECT id, version FROM invoice WHERE id = %s", (1,))
assert b.execute("UPDATE invoice SET total = total + 1 WHERE id = %s", (1,)).rowcount == 1
try:
    a.execute("UPDATE invoice SET total = total + 2 WHERE id = %s", (1,))
    raise SystemExit("expected a conflict")
except errors.SerializationFailure as e:
    assert e.sqlstate == "40001", e.sqlstate
    assert e.diag.constraint_name == "optlock", e.diag.constraint_name
    assert e.diag.table_name == "invoice" and e.diag.schema_name == "public"
    assert e.diag.message_primary == "optimistic lock conflict on public.invoice (id)=(1)", e.diag.message_primary
    assert e.diag.message_detail.startswith("the row was changed by another transaction"), e.diag.message_detail

# Inside a transaction the conflict aborts it, as a server error would.
a.execute("SELECT id, version FROM invoice WHERE id = %s", (2,))
b.execute("SELECT id, version FROM invoice WHERE id = %s", (2,))
b.execute("UPDATE invoice SET total = 0 WHERE id = %s", (2,))
try:
    with a.transaction():
        a.execute("UPDATE invoice SET total = 1 WHERE id = 3")
        a.execute("UPDATE invoice SET total = 5 WHERE id = %s", (2,))
    raise SystemExit("expected a conflict")
except errors.SerializationFailure:
    pass
assert a.execute("SELECT total FROM invoice WHERE id = 3").fetchone()[0] == 10, "rolled back"

# Pipeline mode: several statements in one batch, exact row counts.
a.execute("SELECT id, version FROM invoice WHERE id = 4")
with a.pipeline():
    c1 = a.execute("UPDATE invoice SET total = 40 WHERE id = %s", (4,))
    c2 = a.execute("UPDATE invoice SET total = 50 WHERE id = %s", (5,))
    c3 = a.execute("SELECT total FROM invoice WHERE id = %s", (4,))
assert c1.rowcount == 1 and c2.rowcount == 1
assert c3.fetchone()[0] == 40

print("ok")
