//! What the commands print on stdout: the run summary as a table an operator can act on
//! (counts, corrections by system and op, the next step) or as one line of JSON for
//! programs, and with `--format json` an error object when a command fails.

use std::fmt::Write;

use serde::Serialize;

use super::Format;
use crate::error::{Error, ExitCode};
use crate::run::{EntitySummary, RunSummary};
use crate::write::vocabulary::{Action, Kind, Op};

/// What the table's "next" lines need to know beyond the summary: how to reach the
/// run again from the command line.
#[derive(Debug, Clone, Default)]
pub struct NextSteps {
    /// The job file, as given (none for `recon diff`).
    pub job: Option<String>,
    /// `--output` for `recon apply` when the run's outputs are not the job file's.
    pub output: Option<String>,
    /// The systems `recon apply` can correct (a postgres or mysql exporter).
    pub appliable: Vec<String>,
}

/// One JSON line: the exit code first, then the body's own fields.
#[derive(Serialize)]
struct Printed<'a, T: Serialize> {
    exit_code: u8,
    #[serde(flatten)]
    body: &'a T,
}

/// Prints `body` as one line of JSON with `exit_code` at the top.
pub fn print_json<T: Serialize>(exit: ExitCode, body: &T) {
    let printed = Printed {
        exit_code: exit as u8,
        body,
    };
    println!(
        "{}",
        serde_json::to_string(&printed).expect("a summary serialises")
    );
}

/// Prints a run's summary. Without `list_inputs` the JSON leaves out each snapshot's
/// file list (it is in the run's `summary.json`).
pub fn print_summary(
    mut s: RunSummary,
    exit: ExitCode,
    format: Format,
    list_inputs: bool,
    next: &NextSteps,
) {
    match format {
        Format::Json => {
            if !list_inputs {
                for e in &mut s.entities {
                    e.inputs.source.files.clear();
                    e.inputs.replica.files.clear();
                }
            }
            print_json(exit, &s);
        }
        Format::Text => println!("{}", render_text(&s, next)),
    }
}

/// The error object `--format json` prints on stdout when a command fails (the message
/// also goes to stderr).
pub fn error_json(e: &Error) -> String {
    let code = e.exit_code();
    serde_json::json!({
        "status": "error",
        "exit_code": code as u8,
        "error": { "category": code.as_str(), "message": e.to_string() },
    })
    .to_string()
}

/// The summary as a table: a line per entity, the corrections per system and op, what
/// was not compared or not corrected, where the outputs are and what to do next.
pub fn render_text(s: &RunSummary, next: &NextSteps) -> String {
    let mut out = String::new();
    let elapsed = (s.finished_at - s.started_at).num_milliseconds().max(0) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "job {} run_date {} run_id {} status {} elapsed {elapsed:.1} s",
        s.job, s.run_date, s.run_id, s.status
    );
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6} {:>11} {:>11}  guardrail",
        "entity",
        "source",
        "replica",
        "missing",
        "extra",
        "mismatch",
        "dup",
        "null",
        "correctable",
        "report-only"
    );
    for e in &s.entities {
        let verdict = match &e.guardrail.reason {
            Some(r) => format!("TRIPPED: {r}"),
            None => "ok".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6} {:>11} {:>11}  {}",
            e.entity,
            e.rows.source,
            e.rows.replica,
            kind(e, Kind::MissingInReplica),
            kind(e, Kind::ExtraInReplica),
            kind(e, Kind::FieldMismatch),
            kind(e, Kind::DuplicateKey),
            kind(e, Kind::NullKey),
            correctable(e),
            e.actions.get(&Action::ReportOnly).copied().unwrap_or(0),
            verdict
        );
    }
    corrections_table(&mut out, s);
    for e in &s.entities {
        for (field, n) in &e.unrepresentable {
            let _ = writeln!(
                out,
                "{}.{field}: {n} corrections withheld: the corrected column cannot hold the value exactly (reason unrepresentable)",
                e.entity
            );
        }
    }
    for e in &s.entities {
        let o = &e.one_sided;
        if o.is_empty() {
            continue;
        }
        let list = |side: &str, cols: &[String]| {
            (!cols.is_empty()).then(|| format!("{side} only: {}", cols.join(", ")))
        };
        let sides: Vec<String> = [list("source", &o.source), list("replica", &o.replica)]
            .into_iter()
            .flatten()
            .collect();
        let _ = writeln!(
            out,
            "{}: not compared, on one side only: {}",
            e.entity,
            sides.join("; ")
        );
    }
    let _ = writeln!(out, "outputs:  {}", s.output);
    let _ = write!(out, "manifest: {}", s.manifest);
    for line in next_steps(s, next) {
        let _ = write!(out, "\nnext:     {line}");
    }
    out
}

fn kind(e: &EntitySummary, k: Kind) -> u64 {
    e.counts
        .iter()
        .filter(|c| c.kind == k)
        .map(|c| c.count)
        .sum()
}

fn correctable(e: &EntitySummary) -> u64 {
    e.actions
        .iter()
        .filter(|(a, _)| **a != Action::ReportOnly)
        .map(|(_, n)| n)
        .sum()
}

/// Corrections per entity and system, one column per op; withheld ones say so.
fn corrections_table(out: &mut String, s: &RunSummary) {
    if s.entities.iter().all(|e| e.corrections.is_empty()) {
        let _ = writeln!(out, "corrections: none");
        return;
    }
    let _ = write!(out, "{:<16} {:<12}", "corrections", "system");
    for op in Op::ALL {
        let _ = write!(out, " {:>11}", op.as_str());
    }
    let _ = writeln!(out);
    for e in &s.entities {
        for (system, ops) in &e.corrections {
            let _ = write!(out, "{:<16} {:<12}", e.entity, system);
            for op in Op::ALL {
                let _ = write!(out, " {:>11}", ops.get(op).copied().unwrap_or(0));
            }
            if e.guardrail.tripped {
                let _ = write!(out, "  withheld (guardrail)");
            }
            let _ = writeln!(out);
        }
    }
}

/// What an operator does next: look at the discrepancies, apply what is correctable,
/// release a tripped guardrail.
fn next_steps(s: &RunSummary, next: &NextSteps) -> Vec<String> {
    let mut lines = Vec::new();
    let t = &s.totals;
    if t.discrepancies == 0 {
        lines.push("nothing to do: the systems agree".to_string());
        return lines;
    }
    let base = s.output.strip_prefix("file://").unwrap_or(&s.output);
    lines.push(format!(
        "review   duckdb -c \"SELECT entity, kind, field, action, count(*) FROM read_parquet('{base}/discrepancies/run_date={}/run_id={}/*/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\"",
        s.run_date, s.run_id
    ));
    if let Some(job) = &next.job {
        let output = next
            .output
            .as_ref()
            .map(|o| format!(" --output {o}"))
            .unwrap_or_default();
        // Apply refuses a run whose guardrail tripped unless told to apply the rest.
        let allow = if t.tripped.is_empty() {
            ""
        } else {
            " --allow-guardrail-tripped"
        };
        for system in t.corrections.keys() {
            if next.appliable.contains(system) {
                lines.push(format!(
                    "apply    recon apply --job {job} --run-date {} --run {} --system {system}{output}{allow} --dry-run   (then without --dry-run)",
                    s.run_date, s.run_id
                ));
            }
        }
    }
    // One rerun releases every entity that went past its share: the largest share
    // needed, rounded up to two decimals.
    let over: Vec<&EntitySummary> = s
        .entities
        .iter()
        .filter(|e| e.guardrail.tripped_by.contains(&"max_correction_share"))
        .collect();
    if let Some(needed) = over.iter().map(|e| e.guardrail.share).reduce(f64::max) {
        let needed = ((needed * 100.0).ceil() / 100.0).min(1.0);
        let names: Vec<&str> = over.iter().map(|e| e.entity.as_str()).collect();
        let rerun = match &next.job {
            Some(job) => format!("recon run --job {job} --run-date {}", s.run_date),
            None => "rerun the diff with".to_string(),
        };
        lines.push(format!(
            "release  once the discrepancies are reviewed: {rerun} --max-correction-share {needed:.2} ({})",
            names.join(", ")
        ));
    }
    for e in s
        .entities
        .iter()
        .filter(|e| e.guardrail.tripped_by.contains(&"max_row_drop"))
    {
        lines.push(format!(
            "release  {}: check that the snapshot is complete; if the drop is real, raise max_row_drop for the entity in the job and rerun",
            e.entity
        ));
    }
    lines
}
