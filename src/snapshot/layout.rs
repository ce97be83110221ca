//! Where snapshots are: `{lake}/snapshots/{system}/{entity}/run_date={date}`, or the
//! job's own URL with `{run_date}`, `{system}` and `{entity}` filled in.

use chrono::NaiveDate;

use crate::job::{EntityConfig, JobConfig};

/// Where an entity's snapshot of `system` is: the job's override (which may use
/// `{run_date}`, `{system}` and `{entity}`) or `{lake}/snapshots/{system}/{entity}/run_date={date}`.
pub fn snapshot_url(
    job: &JobConfig,
    entity: &EntityConfig,
    system: &str,
    run_date: NaiveDate,
) -> String {
    let over = if system == job.source {
        &entity.source_snapshot
    } else {
        &entity.replica_snapshot
    };
    match over {
        Some(u) => fill_placeholders(u, run_date, system, &entity.name),
        None => format!(
            "{}/snapshots/{system}/{}/run_date={run_date}",
            job.lake.trim_end_matches('/'),
            entity.name
        ),
    }
}

/// Fills `{run_date}`, `{system}` and `{entity}` into a URL, also where turning a path
/// into a `file://` URL percent-encoded the braces.
pub fn fill_placeholders(url: &str, run_date: NaiveDate, system: &str, entity: &str) -> String {
    let mut out = url.to_string();
    for (name, value) in [
        ("run_date", run_date.to_string()),
        ("system", system.to_string()),
        ("entity", entity.to_string()),
    ] {
        out = out
            .replace(&format!("{{{name}}}"), &value)
            .replace(&format!("%7B{name}%7D"), &value);
    }
    out
}
