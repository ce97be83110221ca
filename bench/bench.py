#!/usr/bin/env python3
"""The diff benchmark: recon against DuckDB and Polars on the same snapshot pairs.

For each size, generates a pair with recon's own generator (12 columns, 1% changed,
0.5% missing each way; deterministic), then runs, several times each, in rounds (every
tool once per round, so that the machine's drift in speed falls on all of them alike):
  - recon:  `recon diff` (full outer join, per-field null-safe comparison, long-format
            discrepancies and typed corrections written to Parquet); the generated
            files are in key order, so recon matches them by its key merge,
  - recon_unsorted: the same, with the right file's row groups in reverse order, so
            that recon matches the sides by its key join instead,
  - duckdb: the same diff in SQL, long-format discrepancies written to Parquet,
  - polars: the same diff with the streaming engine, written to Parquet,
  - floor:  DuckDB reading every column of both files (the scan floor).
Checks that every tool finds the expected counts, and reports median wall time, peak
RSS (of the process tree's largest process, from wait4) and the ratios recon/peer and
recon/floor, on stdout and in bench/results/results.{csv,md}.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIELDS = ["qty", "amount", "price", "ratio", "name", "note", "category", "active",
          "created_at", "updated_at", "day"]

DUCKDB_DIFF = """
import duckdb, sys, json
left, right, out = sys.argv[1:4]
con = duckdb.connect()
fields = {fields}
cond = " OR ".join(f"l.{{f}} IS DISTINCT FROM r.{{f}}" for f in fields)
con.execute(f'''CREATE TEMP TABLE j AS
  SELECT coalesce(l.id, r.id) AS id, l.id IS NULL AS only_r, r.id IS NULL AS only_l,
         {{", ".join(f"l.{{f}} AS l_{{f}}, r.{{f}} AS r_{{f}}" for f in fields)}}
  FROM read_parquet('{{left}}') l FULL OUTER JOIN read_parquet('{{right}}') r ON l.id = r.id
  WHERE l.id IS NULL OR r.id IS NULL OR {{cond}}''')
parts = ["SELECT id, 'missing_in_replica' AS kind, NULL AS field, NULL AS source_value, NULL AS replica_value FROM j WHERE only_l",
         "SELECT id, 'extra_in_replica', NULL, NULL, NULL FROM j WHERE only_r"]
parts += [f"SELECT id, 'field_mismatch', '{{f}}', CAST(l_{{f}} AS VARCHAR), CAST(r_{{f}} AS VARCHAR) FROM j "
          f"WHERE NOT only_l AND NOT only_r AND l_{{f}} IS DISTINCT FROM r_{{f}}" for f in fields]
con.execute(f"COPY ({{' UNION ALL '.join(parts)}}) TO '{{out}}' (FORMAT PARQUET)")
counts = dict(con.execute(f"SELECT kind, count(*) FROM read_parquet('{{out}}') GROUP BY kind").fetchall())
print(json.dumps(counts))
"""

POLARS_DIFF = """
import polars as pl, sys, json
left, right, out = sys.argv[1:4]
fields = {fields}
l = pl.scan_parquet(left)
r = pl.scan_parquet(right).rename({{f: f + "_r" for f in fields + ["id"]}})
j = l.join(r, left_on="id", right_on="id_r", how="full", coalesce=False)
diff = [pl.col(f).ne_missing(pl.col(f + "_r")) for f in fields]
j = j.with_columns(
    pl.coalesce("id", "id_r").alias("key"),
    pl.col("id_r").is_null().alias("only_l"),
    pl.col("id").is_null().alias("only_r"),
).filter(pl.col("only_l") | pl.col("only_r") | pl.any_horizontal(diff)).collect(engine="streaming")
parts = [j.filter(pl.col("only_l")).select(pl.col("key").alias("id"), pl.lit("missing_in_replica").alias("kind"),
          pl.lit(None, pl.Utf8).alias("field"), pl.lit(None, pl.Utf8).alias("source_value"), pl.lit(None, pl.Utf8).alias("replica_value")),
         j.filter(pl.col("only_r")).select(pl.col("key").alias("id"), pl.lit("extra_in_replica").alias("kind"),
          pl.lit(None, pl.Utf8).alias("field"), pl.lit(None, pl.Utf8).alias("source_value"), pl.lit(None, pl.Utf8).alias("replica_value"))]
both = j.filter(~pl.col("only_l") & ~pl.col("only_r"))
for f in fields:
    parts.append(both.filter(pl.col(f).ne_missing(pl.col(f + "_r"))).select(
        pl.col("key").alias("id"), pl.lit("field_mismatch").alias("kind"), pl.lit(f).alias("field"),
        pl.col(f).cast(pl.Utf8).alias("source_value"), pl.col(f + "_r").cast(pl.Utf8).alias("replica_value")))
res = pl.concat(parts)
res.write_parquet(out)
print(json.dumps({{k: n for k, n in res.group_by("kind").len().iter_rows()}}))
"""

UNSORTED_COPY = """
import pyarrow.parquet as pq, sys
src, dst = sys.argv[1:3]
f = pq.ParquetFile(src)
with pq.ParquetWriter(dst, f.schema_arrow, compression="snappy") as w:
    for i in reversed(range(f.num_row_groups)):
        w.write_table(f.read_row_group(i))
print("{}")
"""

DUCKDB_FLOOR = """
import duckdb, sys
con = duckdb.connect()
for f in sys.argv[1:3]:
    con.execute(f"SELECT max(hash(t)) FROM read_parquet('{f}') t").fetchall()
print("{}")
"""


def run_tool(cmd, cwd):
    """Runs cmd; returns (wall seconds, peak RSS in MiB from wait4, stdout)."""
    # The previous run's outputs (hundreds of MB for recon's events, a file for each
    # peer's diff) are flushed to disk first, untimed, so that no run pays for the
    # writeback of another's.
    os.sync()
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{err.read()}")
        return elapsed, usage.ru_maxrss / 1024.0, out.read()


def pair_for(args, size):
    """The generated pair for `size` rows (kept between runs) and its expected counts."""
    pair = Path(args.data) / f"pair-{size}"
    if not (pair / "expected.json").exists():
        subprocess.run([args.recon, "--quiet", "generate", "--bench-rows", str(size), "--out", str(pair)], check=True)
    expected = json.loads((pair / "expected.json").read_text())
    want = {k: expected[k] for k in ("missing_in_replica", "extra_in_replica", "field_mismatch")}
    return pair, want


def unsorted_right(args, pair, work):
    """The pair's right file with its row groups in reverse order (kept between runs)."""
    dst = pair / "right-unsorted.parquet"
    if not dst.exists():
        script = work / "unsorted_copy.py"
        script.write_text(UNSORTED_COPY)
        tmp = pair / "right-unsorted.parquet.tmp"
        subprocess.run([args.python, str(script), str(pair / "right.parquet"), str(tmp)], check=True)
        tmp.rename(dst)
    return dst


def recon_counts(out, plan=None):
    """The discrepancy counts of a `recon diff --format json` summary; with `plan`, checks
    that the key summary used that plan."""
    summary = json.loads(out)
    if plan is not None and summary["entities"][0]["key_summary_plan"] != plan:
        sys.exit(f"recon used the {summary['entities'][0]['key_summary_plan']} plan, not the {plan}")
    got = {}
    for c in summary["entities"][0]["counts"]:
        got[c["kind"]] = got.get(c["kind"], 0) + c["count"]
    return got


def scale(args):
    """recon alone at each --scale size, once, under --memory-limit: time, peak RSS and
    seconds per million rows, to check that memory stays bounded and time grows linearly."""
    work = Path(tempfile.mkdtemp(prefix="recon-scale-"))
    rows_out = []
    for size in [int(s) for s in args.scale.split(",")]:
        pair, want = pair_for(args, size)
        cmd = [args.recon, "--log-level", "error", "--memory-limit", args.memory_limit, "diff",
               "--left", str(pair / "left.parquet"), "--right", str(pair / "right.parquet"), "--key", "id",
               "--no-lock", "--output", str(work / f"recon-{size}"), "--format", "json",
               "--run-id", "scale", "--run-date", "2024-01-01"]
        t, m, out = run_tool(cmd, work)
        got = {k: recon_counts(out).get(k, 0) for k in want}
        if got != want:
            sys.exit(f"recon at {size} rows found {got}, expected {want}")
        shutil.rmtree(work / f"recon-{size}", ignore_errors=True)
        rows_out.append({"rows": size, "memory_limit": args.memory_limit, "recon_s": round(t, 2),
                         "recon_rss_mib": round(m), "s_per_million_rows": round(t / (size / 1e6), 3)})
        print(f"{size:>10} recon {t:8.2f} s {m:9.0f} MiB (limit {args.memory_limit})", flush=True)
    write_table(Path(args.results), "scale", rows_out)
    shutil.rmtree(work, ignore_errors=True)


def write_table(out, name, rows_out):
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows_out[0].keys())
    with open(out / f"{name}.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for row in rows_out:
            f.write(",".join(str(row[k]) for k in keys) + "\n")
    with open(out / f"{name}.md", "w") as f:
        f.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
        for row in rows_out:
            f.write("| " + " | ".join(str(row[k]) for k in keys) + " |\n")
    print((out / f"{name}.md").read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recon", required=True, help="the recon binary (release build)")
    ap.add_argument("--python", default=sys.executable, help="python with duckdb and polars")
    ap.add_argument("--sizes", default="1000000,5000000,20000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/recon-bench"), help="where pairs are kept")
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--scale", default="", help="sizes at which recon alone runs once under --memory-limit "
                    "(the bounded-memory check; results in scale.{csv,md})")
    ap.add_argument("--memory-limit", default="4GiB", help="recon's --memory-limit for the --scale runs")
    args = ap.parse_args()
    if args.scale:
        return scale(args)
    fields = json.dumps(FIELDS)
    work = Path(tempfile.mkdtemp(prefix="recon-bench-"))
    scripts = {}
    for name, body in [("duckdb", DUCKDB_DIFF.format(fields=fields)), ("polars", POLARS_DIFF.format(fields=fields)),
                       ("floor", DUCKDB_FLOOR)]:
        scripts[name] = work / f"bench_{name}.py"
        scripts[name].write_text(body)
    rows_out = []
    for size in [int(s) for s in args.sizes.split(",")]:
        pair, want = pair_for(args, size)
        left, right = str(pair / "left.parquet"), str(pair / "right.parquet")
        unsorted = str(unsorted_right(args, pair, work))
        recon = lambda i, right, name: [
            args.recon, "--log-level", "error", "diff", "--left", left, "--right", right, "--key", "id", "--no-lock",
            "--output", str(work / f"{name}-{size}-{i}"), "--format", "json", "--run-id", f"bench-{i}",
            "--run-date", "2024-01-01"]
        tools = {
            "recon": lambda i: recon(i, right, "recon"),
            "recon_unsorted": lambda i: recon(i, unsorted, "recon_unsorted"),
            "duckdb": lambda i: [args.python, str(scripts["duckdb"]), left, right, str(work / f"duckdb-{size}-{i}.parquet")],
            "polars": lambda i: [args.python, str(scripts["polars"]), left, right, str(work / f"polars-{size}-{i}.parquet")],
            "floor": lambda i: [args.python, str(scripts["floor"]), left, right],
        }
        # Round by round, each tool once per round: the machine's speed drifts by tens of
        # percent over minutes, and interleaving spreads the drift over every tool alike
        # instead of favouring whichever ran in a fast stretch.
        times = {tool: [] for tool in tools}
        rss = {tool: [] for tool in tools}
        for i in range(args.runs):
            for tool, cmd in tools.items():
                t, m, out = run_tool(cmd(i), work)
                times[tool].append(t)
                rss[tool].append(m)
                if tool == "recon":
                    got = recon_counts(out, "merge")
                elif tool == "recon_unsorted":
                    got = recon_counts(out, "join")
                elif tool == "floor":
                    got = want
                else:
                    got = json.loads(out)
                got = {k: got.get(k, 0) for k in want}
                if got != want:
                    sys.exit(f"{tool} at {size} rows found {got}, expected {want}")
        results = {}
        for tool in tools:
            results[tool] = (statistics.median(times[tool]), statistics.median(rss[tool]))
            runs = " ".join(f"{t:.2f}" for t in times[tool])
            print(f"{size:>10} {tool:<14} {results[tool][0]:8.2f} s {results[tool][1]:9.0f} MiB   (runs: {runs})",
                  flush=True)
        r = results["recon"]
        rows_out.append({
            "rows": size,
            **{f"{t}_s": round(v[0], 2) for t, v in results.items()},
            **{f"{t}_rss_mib": round(v[1]) for t, v in results.items()},
            "recon_vs_duckdb": round(r[0] / results["duckdb"][0], 2),
            "recon_vs_polars": round(r[0] / results["polars"][0], 2),
            "recon_vs_floor": round(r[0] / results["floor"][0], 2),
            "recon_rss_vs_duckdb": round(r[1] / results["duckdb"][1], 2),
            "recon_unsorted_vs_duckdb": round(results["recon_unsorted"][0] / results["duckdb"][0], 2),
            "recon_unsorted_vs_floor": round(results["recon_unsorted"][0] / results["floor"][0], 2),
        })
    write_table(Path(args.results), "results", rows_out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
