// node-postgres through optlock: simple and extended queries, a transaction, and the conflict
// error as the driver reports it. Usage: node check.js CONNINFO-URL  (prints "ok" on success)
'use strict';
const { Client } = require('pg');
const assert = require('assert');

async function main() {
  const url = process.argv[2];
  const setup = new Client({ connectionString: url });
  await setup.connect();
  await setup.query(
    'CREATE TABLE invoice (id int PRIMARY KEY, total numeric NOT NULL, version bigint NOT NULL DEFAULT 0)');
  await setup.query('INSERT INTO invoice (id, total) SELECT g, 10 FROM generate_series(1, 5) g');
  await setup.end();

  const a = new Client({ connectionString: url });
  const b = new Client({ connectionString: url });
  await a.connect();
  await b.connect();

  // Extended protocol (parameters), then the simple protocol (no parameters).
  let r = await a.query('SELECT id, total, version FROM invoice WHERE id = $1', [1]);
  assert.strictEqual(r.rows[0].version, '0');
  await b.query('SELECT id, version FROM invoice WHERE id = 1');
  r = await b.query('UPDATE invoice SET total = total + 1 WHERE id = 1');
  assert.strictEqual(r.rowCount, 1);
  await assert.rejects(
    a.query('UPDATE invoice SET total = total + 2 WHERE id = $1', [1]),
    (e) => {
      assert.strictEqual(e.code, '40001');
      assert.strictEqual(e.constraint, 'optlock');
      assert.strictEqual(e.table, 'invoice');
      assert.strictEqual(e.schema, 'public');
      assert.strictEqual(e.message, 'optimistic lock conflict on public.invoice (id)=(1)');
      assert.ok(e.detail.startsWith('the row was changed by another transaction'), e.detail);
      assert.strictEqual(e.hint, 'reload the row and apply the change again');
      return true;
    });

  // In a transaction the conflict aborts it on the server.
  await a.query('SELECT id, version FROM invoice WHERE id = 2');
  await b.query('UPDATE invoice SET total = 0 WHERE id = 2');
  await a.query('BEGIN');
  await a.query('UPDATE invoice SET total = 1 WHERE id = 3');
  await assert.rejects(a.query('UPDATE invoice SET total = 5 WHERE id = 2'), { code: '40001' });
  await assert.rejects(a.query('SELECT 1'), { code: '25P02' });
  r = await a.query('COMMIT');
  assert.strictEqual(r.command, 'ROLLBACK');
  r = await a.query('SELECT total FROM invoice WHERE id = 3');
  assert.strictEqual(r.rows[0].total, '10');

  // After a fresh read the write goes through.
  await a.query('SELECT id, version FROM invoice WHERE id = $1', [1]);
  r = await a.query('UPDATE invoice SET total = 100 WHERE id = $1', [1]);
  assert.strictEqual(r.rowCount, 1);

  await a.end();
  await b.end();
  console.log('ok');
}

main().catch((e) => { console.error(e); process.exit(1); });
