//! Progress of an entity's queries on a terminal: the stage and the rows each side's
//! scans have produced so far, read from the running plan's own metrics (no extra
//! operator in the plan). Printed on stderr, redrawn in place twice a second, and only
//! when the caller asks for it (a terminal, no `--quiet`).

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path;

/// What one entity's progress line names: its label and each side's files and rows.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `[i/n] entity`.
    pub label: String,
    /// Source's then replica's object paths and total rows.
    pub sides: [(HashSet<Path>, u64); 2],
}

impl Progress {
    /// Shows `stage` until the returned guard is dropped; `plan` is the stage's running
    /// plan, whose scans are counted.
    pub fn watch(&self, stage: &'static str, plan: Arc<dyn ExecutionPlan>) -> Watch {
        let this = self.clone();
        let task = tokio::spawn(async move {
            loop {
                this.draw(stage, &plan);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Watch { task }
    }

    fn draw(&self, stage: &str, plan: &Arc<dyn ExecutionPlan>) {
        let mut line = format!("\r{}: {stage}", self.label);
        for (name, (files, total)) in ["source", "replica"].iter().zip(&self.sides) {
            let rows = scanned(plan, files);
            if rows > 0 {
                line.push_str(&format!(", {name} {} of {}", human(rows), human(*total)));
            }
        }
        // Clear what a longer earlier line left behind.
        line.push_str("\x1b[K");
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

/// Stops a stage's progress line when dropped.
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rows read so far by the scans in `plan` that read `files`.
fn scanned(plan: &Arc<dyn ExecutionPlan>, files: &HashSet<Path>) -> u64 {
    let mut rows = 0;
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>()
        && let Some(config) = scan.data_source().downcast_ref::<FileScanConfig>()
        && config
            .file_groups
            .iter()
            .flat_map(|g| g.files())
            .any(|f| files.contains(&f.object_meta.location))
    {
        // Rows a filter applied while decoding dropped were read too.
        if let Some(m) = plan.metrics() {
            let pruned = m.sum_by_name("pushdown_rows_pruned").map(|v| v.as_usize());
            rows += (m.output_rows().unwrap_or_default() + pruned.unwrap_or_default()) as u64;
        }
    }
    for child in plan.children() {
        rows += scanned(child, files);
    }
    rows
}

/// `12.3M`, `450.0k`, `999`.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
