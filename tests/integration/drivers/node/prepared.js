// node-postgres load through pgfunnel (tests/integration/test_prepared_drivers.py).
//
// CLIENTS separate pg.Client connections (not a pg.Pool), all at once, each running
// ITERATIONS rounds of named queries ({name, text, values}): node-postgres sends the Parse of
// a name only the first time a connection uses it and then Bind/Execute only, so pgfunnel has
// to make each statement exist on whichever server the client is given. Every row is checked.
//
// Usage: node prepared.js HOST PORT USER PASSWORD DBNAME CLIENTS ITERATIONS
// Prints one JSON line {"clients", "finished", "queries", "errors": [...]}; exits 0 only when
// every client finished with every result right.

'use strict';

const { Client } = require('pg');

const [host, port, user, password, database, nclients, iterations] = process.argv.slice(2);
const CLIENTS = Number(nclients);
const ITERATIONS = Number(iterations);

const errors = [];
let queries = 0;
let finished = 0;

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function runClient(id) {
  const client = new Client({
    host, port: Number(port), user, password, database,
    connectionTimeoutMillis: 10000, query_timeout: 60000,
  });
  await client.connect();
  try {
    for (let j = 0; j < ITERATIONS; j++) {
      const v = id * 100000 + j;
      const tag = `c${id}-${j}`;
      const tx = j % 5 === 4;
      if (tx) await client.query('BEGIN');

      let r = await client.query({
        name: 'q1', text: 'SELECT $1::int * 2 AS d, $2::text AS t', values: [v, tag],
      });
      check(r.rows.length === 1, `q1: ${r.rows.length} rows`);
      check(r.rows[0].d === v * 2, `q1: d=${r.rows[0].d}, want ${v * 2}`);
      check(r.rows[0].t === tag, `q1: t=${r.rows[0].t}, want ${tag}`);
      queries++;

      r = await client.query({
        name: 'q2',
        text: "SELECT $1::text || '/' || $2::int AS s, length($1::text) AS n",
        values: [tag, j],
      });
      check(r.rows.length === 1, `q2: ${r.rows.length} rows`);
      check(r.rows[0].s === `${tag}/${j}`, `q2: s=${r.rows[0].s}`);
      check(r.rows[0].n === tag.length, `q2: n=${r.rows[0].n}`);
      queries++;

      if (j % 4 === 0) {
        const n = 1 + ((id + j) % 7);
        r = await client.query({
          name: 'q3',
          text: 'SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) AS g ORDER BY g',
          values: [id, n],
        });
        check(r.rows.length === n, `q3: ${r.rows.length} rows, want ${n}`);
        r.rows.forEach((row, i) => {
          check(row.g === i + 1 && row.m === (i + 1) * id, `q3: row ${i} = ${JSON.stringify(row)}`);
        });
        queries++;
      }

      if (tx) await client.query('COMMIT');
    }
    finished++;
  } finally {
    await client.end();
  }
}

async function main() {
  const all = [];
  for (let i = 1; i <= CLIENTS; i++) {
    all.push(runClient(i).catch((e) => {
      errors.push(`client ${i}: ${e.message}${e.code ? ` [${e.code}]` : ''}`);
    }));
  }
  await Promise.all(all);
  console.log(JSON.stringify({ clients: CLIENTS, finished, queries, errors }));
  process.exit(errors.length === 0 && finished === CLIENTS ? 0 : 1);
}

main().catch((e) => {
  console.log(JSON.stringify({ clients: CLIENTS, finished, queries, errors: [`main: ${e}`] }));
  process.exit(1);
});
