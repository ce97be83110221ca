"""A nightly recon DAG: export and diff, then apply the corrections or alert a person.

Copy this file into your DAGs folder. It needs Airflow 3.3 or newer and a `recon` binary
on the workers; it uses only Airflow's public Task SDK (`airflow.sdk`) and no providers.

    recon_run ──> route_run ──> recon_apply ──> route_apply ──> alert_apply_incomplete
                            └─> alert_guardrail

`recon_run` runs `recon run` (which exports both systems when the job declares exporters,
diffs them and commits the outputs) and returns only its exit code and run id. The rest
of the DAG follows recon's exit codes (README, "Exit codes"):

| exit | meaning                                 | here                                        |
|------|-----------------------------------------|---------------------------------------------|
| 0    | run committed                           | `recon_apply` applies that run              |
| 3    | guardrail tripped, corrections withheld | `alert_guardrail`; nothing is applied       |
| 2, 4 | bad job or command line, bad input data | the task fails at once, without a retry     |
| 5, 6 | storage or database unreachable, locked | retried, with exponential backoff           |
| 7    | apply done, some corrections stale or failed | `alert_apply_incomplete`               |
| else | internal error (70), stopped by a signal | the task fails at once, without a retry    |

The alert tasks fail on purpose, after logging what a person should look at: the DAG
run then shows as failed and Airflow's own failure notifications (`on_failure_callback`,
e-mail) reach someone. Put your own notifier in them if you prefer.

Retries never repeat a committed run: each attempt passes its own `--run-id`, made of
the DAG run's id and the task's try number (which a clear increments too), because recon
refuses a run id already committed for the date (exit 2). The apply task applies exactly
the run that `recon_run` committed (`--run`), and an apply can be rerun safely: what an
earlier attempt applied is skipped as already applied.

Settings, read when a task runs: an Airflow Variable if set (also `AIRFLOW_VAR_<NAME>`),
else an environment variable of the worker, else the default.

| Variable           | environment        | default                          |
|--------------------|--------------------|----------------------------------|
| `recon_bin`        | `RECON_BIN`        | `recon` (found on `PATH`)        |
| `recon_job`        | `RECON_JOB`        | `/srv/recon/jobs/identity.toml`  |
| `recon_apply_system` | `RECON_APPLY_SYSTEM` | `service`                      |

The database URLs and S3 credentials the job needs (its exporters' `url_env`,
`AWS_*`) come from the worker's environment, as for any recon run. Read when the file is
parsed, from the environment only: `RECON_DAG_ID` (`recon_nightly`), `RECON_SCHEDULE`
(`0 2 * * *`, UTC), `RECON_RETRIES` (3) and `RECON_RETRY_DELAY_SECS` (300; doubled at
each retry, at most an hour).

The run date is the day before the run's logical date (a run at 02:00 on June 2nd
reconciles June 1st), or the `run_date` parameter when a run is triggered with one, e.g.
`airflow dags trigger recon_nightly --conf '{"run_date": "2024-06-01"}'`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, Param, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

log = logging.getLogger(__name__)

DAG_ID = os.environ.get("RECON_DAG_ID", "recon_nightly")
SCHEDULE = os.environ.get("RECON_SCHEDULE", "0 2 * * *")
RETRIES = int(os.environ.get("RECON_RETRIES", "3"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("RECON_RETRY_DELAY_SECS", "300")))

# recon's exit codes (README, "Exit codes").
SUCCESS = 0
USAGE = 2
GUARDRAIL_TRIPPED = 3
BAD_INPUT = 4
UNAVAILABLE = 5
LOCKED = 6
APPLY_INCOMPLETE = 7
RETRYABLE = {UNAVAILABLE, LOCKED}

# Only the stages that talk to storage and databases retry, and only on 5 and 6: the
# others raise AirflowFailException, which Airflow never retries.
RETRYING = dict(
    multiple_outputs=False,  # one small XCom, not one per key as well
    retries=RETRIES,
    retry_delay=RETRY_DELAY,
    retry_exponential_backoff=2.0,
    max_retry_delay=timedelta(hours=1),
)


def setting(variable: str, env: str, default: str) -> str:
    """An Airflow Variable, else an environment variable, else the default."""
    return Variable.get(variable, default=os.environ.get(env, default))


def run_date(context) -> str:
    """The night being reconciled: the `run_date` parameter, else the day before the run."""
    given = context["params"].get("run_date")
    if given:
        return str(given)
    dag_run = context["dag_run"]
    when = dag_run.logical_date or dag_run.run_after
    return (when.astimezone(timezone.utc) - timedelta(days=1)).date().isoformat()


def attempt_run_id(context) -> str:
    """A recon run id unique to this attempt: the DAG run's id and the try number.

    recon takes 1 to 64 letters, digits, `-`, `_` and `.`; other characters become `-`,
    and a long id keeps its start and a hash of the whole.
    """
    run_id = context["dag_run"].run_id
    suffix = f"-{context['ti'].try_number}"
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", run_id)
    if len(safe) + len(suffix) > 64:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        safe = f"{safe[: 64 - len(suffix) - 9]}-{digest}"
    return safe + suffix


def recon(args: list[str]) -> tuple[int, str]:
    """Runs recon; its log (stderr) goes to the task log as it comes, its result (stdout)
    is returned. If the task is stopped meanwhile, recon is stopped too (SIGTERM: it
    removes its uncommitted files and releases its lock)."""
    command = [setting("recon_bin", "RECON_BIN", "recon"), *args]
    log.info("running %s", " ".join(command))
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:
                log.info("recon: %s", line.rstrip())
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait(timeout=60)
            raise
        out.seek(0)
        return code, out.read()


def totals(stdout: str) -> str:
    """The `totals` of recon's `--format json` line (or its error object), for the task
    log; the whole summary is in the run's summary.json."""
    try:
        result = json.loads(stdout)
    except ValueError:
        return stdout.strip()
    return json.dumps(result.get("totals", result), separators=(",", ":"))


def fail_or_retry(stage: str, code: int, allowed: set[int]) -> None:
    """Raises unless `code` is one the DAG goes on with: a retryable failure for 5 and 6,
    a final one (no retry) for anything else."""
    if code in allowed:
        return
    message = f"recon {stage} exited with code {code}"
    if code in RETRYABLE:
        raise AirflowException(f"{message}: storage, database or lock unavailable; retrying")
    hint = {
        USAGE: "bad command line or job file",
        BAD_INPUT: "bad input data; fix the export or the source, then rerun",
    }.get(code, "see the log above")
    raise AirflowFailException(f"{message} ({hint}); not retried")


@task(**RETRYING)
def recon_run() -> dict:
    """`recon run`: export (when the job declares exporters), diff, commit."""
    context = get_current_context()
    run_id = attempt_run_id(context)
    job = setting("recon_job", "RECON_JOB", "/srv/recon/jobs/identity.toml")
    code, stdout = recon(
        [
            "run", "--job", job, "--run-date", run_date(context), "--run-id", run_id,
            "--format", "json",
        ]
    )
    log.info("recon run: %s", totals(stdout))
    fail_or_retry("run", code, {SUCCESS, GUARDRAIL_TRIPPED})
    # Only what the next tasks need goes to XCom, not the summary.
    return {"exit_code": code, "run_id": run_id}


@task.branch(retries=0)
def route_run(result: dict) -> str:
    """0 → apply the run; 3 → alert (its corrections were withheld)."""
    return "recon_apply" if result["exit_code"] == SUCCESS else "alert_guardrail"


@task(**RETRYING)
def recon_apply(result: dict) -> dict:
    """`recon apply` of the run `recon_run` committed, to the configured system."""
    context = get_current_context()
    system = setting("recon_apply_system", "RECON_APPLY_SYSTEM", "service")
    job = setting("recon_job", "RECON_JOB", "/srv/recon/jobs/identity.toml")
    code, stdout = recon(
        [
            "apply", "--job", job, "--run-date", run_date(context), "--system", system,
            "--run", result["run_id"], "--format", "json",
        ]
    )
    log.info("recon apply: %s", totals(stdout))
    fail_or_retry("apply", code, {SUCCESS, APPLY_INCOMPLETE})
    return {"exit_code": code, "run_id": result["run_id"]}


@task.branch(retries=0)
def route_apply(result: dict) -> str | None:
    """0 → done; 7 → alert (some corrections were stale or failed)."""
    return "alert_apply_incomplete" if result["exit_code"] == APPLY_INCOMPLETE else None


@task(retries=0)
def alert_guardrail(result: dict) -> None:
    """Exit 3: fails on purpose so that a person is told (see the module's docstring)."""
    context = get_current_context()
    raise AirflowFailException(
        f"recon run {result['run_id']} for {run_date(context)}: a guardrail tripped and "
        "corrections were withheld (see the run's summary.json). Once reviewed, rerun with "
        "a raised --max-correction-share, or apply the other entities with "
        "`recon apply --allow-guardrail-tripped`."
    )


@task(retries=0)
def alert_apply_incomplete(result: dict) -> None:
    """Exit 7: fails on purpose so that a person is told (see the module's docstring)."""
    context = get_current_context()
    raise AirflowFailException(
        f"recon apply of run {result['run_id']} for {run_date(context)}: some corrections "
        "were stale or failed; recon_apply's log has the counts, and the apply report is "
        "under the job's output, applies/run_date=…/run_id=…/."
    )


@dag(
    dag_id=DAG_ID,
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=datetime(2024, 6, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={
        "run_date": Param(
            None, type=["null", "string"], description="YYYY-MM-DD; default: the day before"
        )
    },
    tags=["recon"],
    doc_md=__doc__,
)
def recon_nightly():
    run = recon_run()
    route = route_run(run)
    applied = recon_apply(run)
    route >> [applied, alert_guardrail(run)]
    route_apply(applied) >> alert_apply_incomplete(applied)


recon_nightly()
