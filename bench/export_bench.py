#!/usr/bin/env python3
"""The export benchmark: a PostgreSQL table to Parquet, recon against connectorx.

Creates (once per size, in database recon_bench_export on 127.0.0.1:5432) a table of
N rows and 12 columns (bigint, int, numeric(12,2), float8, float4, text x3 with nulls,
bool, timestamptz, timestamp, date), then runs, several times each:
  - recon:      `recon export` of the table (COPY binary, streamed to Parquet),
  - connectorx: connectorx reading the table into Arrow, pyarrow writing Parquet,
checks with DuckDB that both files hold the same rows (count, sums, null counts), and
reports median wall time, rows/s and peak RSS (wait4) on stdout and in
bench/results/export.{csv,md}.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DB = "recon_bench_export"
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"]

TABLE = """
DROP TABLE IF EXISTS bench_{n};
CREATE TABLE bench_{n} AS
SELECT i::bigint AS id,
       (i % 1000)::int AS qty,
       ((i % 100000) / 100.0)::numeric(12,2) AS amount,
       (i * 0.37)::float8 AS price,
       ((i % 97) / 7.0)::float4 AS ratio,
       'name-' || (i % 50000) AS name,
       CASE WHEN i % 10 = 0 THEN NULL ELSE 'note about row ' || i END AS note,
       (ARRAY['a','b','c','d'])[1 + i % 4] AS category,
       i % 3 = 0 AS active,
       timestamptz '2024-01-01 00:00:00+00' + (i % 86400) * interval '1 second' AS created_at,
       timestamp '2024-01-01 00:00:00' + (i % 3600) * interval '1 minute' AS updated_at,
       date '2020-01-01' + (i % 1500)::int AS day
FROM generate_series(1, {n}) AS s(i);
ANALYZE bench_{n};
"""

PEER = """
import connectorx as cx, pyarrow.parquet as pq, sys
url, table, out = sys.argv[1:4]
query = f"SELECT * FROM {table}"
try:
    reader = cx.read_sql(url, query, return_type="arrow_stream", batch_size=65536)
    writer = None
    for batch in reader:
        if writer is None:
            writer = pq.ParquetWriter(out, batch.schema, compression="snappy")
        writer.write_batch(batch)
    writer.close()
    print("arrow_stream")
except TypeError:
    pq.write_table(cx.read_sql(url, query, return_type="arrow"), out, compression="snappy")
    print("arrow")
"""

CHECK = """
import duckdb, sys, json
con = duckdb.connect()
q = "SELECT count(*), sum(id), sum(amount)::DECIMAL(38,2)::varchar, count(note), sum(qty), count(DISTINCT day) FROM read_parquet('{}')"
print(json.dumps([list(map(str, con.execute(q.format(f)).fetchone())) for f in sys.argv[1:]]))
"""


def run_tool(cmd, cwd, env=None):
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            sys.exit(f"{cmd[0]} failed ({code}):\n{err.read()}")
        return elapsed, usage.ru_maxrss / 1024.0, out.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recon", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rows", default="5000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", default="bench/results")
    args = ap.parse_args()
    exists = subprocess.run(PG + ["-d", "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DB}'"],
                            check=True, capture_output=True, text=True).stdout.strip()
    if not exists:
        subprocess.run(PG + ["-d", "postgres", "-c", f"CREATE DATABASE {DB}"], check=True)
    # Plain TCP for both tools, as measured (without sslmode, recon would use TLS when
    # the server offers it, as libpq does).
    url = f"postgresql://postgres@127.0.0.1:5432/{DB}?sslmode=disable"
    work = Path(tempfile.mkdtemp(prefix="recon-export-bench-"))
    (work / "peer.py").write_text(PEER)
    (work / "check.py").write_text(CHECK)
    rows_out = []
    for n in [int(s) for s in args.rows.split(",")]:
        have = subprocess.run(PG + ["-d", DB, "-c", f"SELECT to_regclass('bench_{n}') IS NOT NULL"],
                              check=True, capture_output=True, text=True).stdout.strip()
        if have != "t":
            print(f"creating bench_{n} ({n} rows)", flush=True)
            subprocess.run(PG + ["-d", DB], input=TABLE.format(n=n), check=True, text=True)
        (work / "job.toml").write_text(
            f'[job]\nname = "bench"\nlake = "lake"\n[systems]\nsource = "pg"\nreplica = "other"\n'
            f'[exporters.pg]\nkind = "postgres"\nurl_env = "BENCH_PG_URL"\n'
            f'[[entities]]\nname = "bench"\nkey = ["id"]\nexport.pg = {{ table = "bench_{n}" }}\n')
        env = dict(os.environ, BENCH_PG_URL=url)
        results = {}
        files = {}
        mode = ""
        for tool in ("recon", "connectorx"):
            times, rss = [], []
            for i in range(args.runs):
                if tool == "recon":
                    cmd = [args.recon, "--quiet", "export", "--job", "job.toml", "--run-date", "2024-01-01", "--no-lock"]
                else:
                    files[tool] = str(work / f"cx-{n}.parquet")
                    cmd = [args.python, str(work / "peer.py"), url, f"bench_{n}", files[tool]]
                t, m, out = run_tool(cmd, work, env)
                if tool == "connectorx":
                    mode = out.strip()
                times.append(t)
                rss.append(m)
            results[tool] = (statistics.median(times), statistics.median(rss))
            print(f"{n:>10} {tool:<10} {results[tool][0]:8.2f} s {n / results[tool][0]:12,.0f} rows/s {results[tool][1]:8.0f} MiB", flush=True)
        snap = work / "lake/snapshots/pg/bench/run_date=2024-01-01"
        files["recon"] = str(next(snap.glob("part-*.parquet")))
        _, _, out = run_tool([args.python, str(work / "check.py"), files["recon"], files["connectorx"]], work)
        a, b = json.loads(out)
        if a != b or int(a[0]) != n:
            sys.exit(f"recon and connectorx disagree at {n} rows: {a} vs {b}")
        r, c = results["recon"], results["connectorx"]
        rows_out.append({
            "rows": n,
            "recon_s": round(r[0], 2), "connectorx_s": round(c[0], 2),
            "recon_rows_per_s": round(n / r[0]), "connectorx_rows_per_s": round(n / c[0]),
            "recon_rss_mib": round(r[1]), "connectorx_rss_mib": round(c[1]),
            "recon_vs_connectorx": round(r[0] / c[0], 2),
            "recon_rss_vs_connectorx": round(r[1] / c[1], 2),
            "connectorx_mode": mode,
        })
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows_out[0].keys())
    with open(out / "export.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for row in rows_out:
            f.write(",".join(str(row[k]) for k in keys) + "\n")
    with open(out / "export.md", "w") as f:
        f.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
        for row in rows_out:
            f.write("| " + " | ".join(str(row[k]) for k in keys) + " |\n")
    print((out / "export.md").read_text())


if __name__ == "__main__":
    main()
