#!/usr/bin/env bash
# Installs, once, into $RECON_TOOLS (default ~/.cache/recon-tools): the S3-compatible
# servers the integration tests start on loopback, moto's S3 server from PyPI (AWS
# conditional-write semantics) and Garage from crates.io (a production object store;
# building it takes a while the first time), the benchmark peers DuckDB, Polars and
# connectorx (with pyarrow), and Apache Airflow in a venv of its own (airflow-venv), for the
# test that runs examples/airflow/recon_dag.py.
set -euo pipefail
TOOLS="${RECON_TOOLS:-$HOME/.cache/recon-tools}"
MOTO_VERSION=5.2.5
GARAGE_VERSION=2.5.0
DUCKDB_VERSION=2.0.0
POLARS_VERSION=2.1.0
CONNECTORX_VERSION=0.4.6
PYARROW_VERSION=26.0.1
AIRFLOW_VERSION=3.3.2
mkdir -p "$TOOLS"
if ! "$TOOLS/venv/bin/python" -c "import moto, flask, duckdb, polars, connectorx, pyarrow" 2>/dev/null; then
  echo "tools: installing moto $MOTO_VERSION, duckdb, polars, connectorx and pyarrow into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION" "duckdb==$DUCKDB_VERSION" "polars==$POLARS_VERSION" \
    "connectorx==$CONNECTORX_VERSION" "pyarrow==$PYARROW_VERSION"
fi
# Airflow's dependencies are pinned by scripts/airflow-constraints.txt (about 30 s cold).
if ! "$TOOLS/airflow-venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('apache-airflow') != '$AIRFLOW_VERSION')" 2>/dev/null; then
  echo "tools: installing apache-airflow $AIRFLOW_VERSION into $TOOLS/airflow-venv"
  rm -rf "$TOOLS/airflow-venv"
  python3 -m venv "$TOOLS/airflow-venv"
  "$TOOLS/airflow-venv/bin/pip" install --quiet "apache-airflow==$AIRFLOW_VERSION" \
    --constraint "$(dirname "$0")/airflow-constraints.txt"
fi
if [ ! -x "$TOOLS/bin/garage" ]; then
  echo "tools: building garage $GARAGE_VERSION into $TOOLS/bin (about 15 minutes on 2 cores)"
  cargo install garage --version "$GARAGE_VERSION" --locked --root "$TOOLS" --target-dir "$TOOLS/target"
  rm -rf "$TOOLS/target"
fi
"$TOOLS/bin/garage" --version >/dev/null
"$TOOLS/venv/bin/moto_server" --help >/dev/null
test -x "$TOOLS/airflow-venv/bin/airflow"
echo "tools: garage, moto and airflow ready in $TOOLS"
