//! The output contract: the run's Hive-style layout, streaming Parquet sinks, the
//! summary and the manifest (written last, as the run's commit marker), the clean-up of
//! runs that never committed, and, in the submodules, the encoders every output shares
//! ([`encode`]), the correction events ([`events`]) and the typed values that events and
//! apply read from correction files ([`value`]).

pub mod encode;
pub mod events;
pub mod value;
pub mod vocabulary;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, NaiveDate, Utc};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Location;

/// Version of the manifest format; readers refuse newer versions.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "_manifest.json";

/// Where one run's files go under the job's output prefix.
#[derive(Debug, Clone)]
pub struct RunLayout {
    pub output: Location,
    pub run_date: NaiveDate,
    pub run_id: String,
}

impl RunLayout {
    pub fn part(&self) -> String {
        format!("run_date={}/run_id={}", self.run_date, self.run_id)
    }
    pub fn discrepancies(&self, entity: &str) -> String {
        format!(
            "discrepancies/{}/entity={entity}/part-00000.parquet",
            self.part()
        )
    }
    pub fn corrections(&self, system: &str, entity: &str) -> String {
        format!(
            "corrections/{}/system={system}/entity={entity}/part-00000.parquet",
            self.part()
        )
    }
    pub fn events(&self, system: &str, entity: &str) -> String {
        format!(
            "events/{}/system={system}/entity={entity}/events.ndjson",
            self.part()
        )
    }
    pub fn run_dir(&self) -> String {
        format!("runs/{}", self.part())
    }
    pub fn summary(&self) -> String {
        format!("{}/summary.json", self.run_dir())
    }
    pub fn manifest(&self) -> String {
        format!("{}/{MANIFEST_FILE}", self.run_dir())
    }
    pub fn latest(&self) -> String {
        format!("runs/run_date={}/_latest.json", self.run_date)
    }
    pub fn path(&self, rel: &str) -> Path {
        self.output.child(rel).prefix
    }
    pub fn url(&self, rel: &str) -> String {
        self.output.child(rel).url()
    }
}

/// The schema of discrepancy files (see the README's output contract).
pub fn discrepancy_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("run_date", DataType::Date32, false),
        Field::new("job", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, true),
        Field::new("source_value", DataType::Utf8, true),
        Field::new("replica_value", DataType::Utf8, true),
        Field::new("owner", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("numeric_delta", DataType::Float64, true),
        Field::new("correction_id", DataType::Utf8, true),
    ]))
}

/// Snappy, and row groups of at most `row_group_rows`.
fn properties(row_group_rows: usize) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
}

/// A Parquet file being streamed to the store (multipart upload underneath).
///
/// The file is encoded and uploaded by a task of its own, so that the files a stage
/// writes at once (an entity's discrepancies and corrections) are encoded in parallel
/// with each other and with the work that produces their rows. A sink dropped without
/// [`Self::finish`] or [`Self::close`] abandons its upload: the file never appears.
pub struct ParquetSink {
    path: Path,
    store: Arc<dyn object_store::ObjectStore>,
    feed: Feed<SinkMessage>,
    rows: u64,
}

enum SinkMessage {
    Batch(RecordBatch),
    /// Write the footer and complete the upload.
    Close,
}

/// What a writer on a task of its own ([`Feed`]) may hold queued before its producer
/// waits.
const SINK_QUEUE: usize = 2;

/// The producer's end of a writer that runs on a task of its own and is fed through a
/// short queue: [`ParquetSink`], and the events files. The writer ends when told to
/// or, when the feed is dropped unfinished, at its next message ([`Abandoned`]); it then
/// aborts its upload, so that no multipart upload of the run is left behind.
pub(crate) struct Feed<M> {
    /// The file written, relative to its base, for errors.
    pub rel: String,
    /// To the writing task; `None` once it has failed or been told to close.
    queue: Option<tokio::sync::mpsc::Sender<M>>,
    /// The writing task, until its outcome has been taken.
    writing: Option<tokio::task::JoinHandle<Result<()>>>,
    abandoned: Abandoned,
}

/// Set when a [`Feed`] is dropped unfinished (its stage failed or was stopped): its
/// writer writes nothing more and aborts its upload.
#[derive(Clone, Default)]
pub(crate) struct Abandoned(Arc<std::sync::atomic::AtomicBool>);

impl Abandoned {
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A feed dropped unfinished closes its queue and marks it abandoned: the writer stops
/// at its next message and aborts its multipart upload (if it had started one), on its
/// own, since a drop cannot wait.
impl<M> Drop for Feed<M> {
    fn drop(&mut self) {
        if self.writing.take().is_some() {
            self.abandoned
                .0
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl<M: Send + 'static> Feed<M> {
    /// Spawns `writer`, given the receiving end of the queue and the flag that says
    /// the feed was dropped unfinished.
    pub fn spawn<W, F>(rel: String, writer: W) -> Self
    where
        W: FnOnce(tokio::sync::mpsc::Receiver<M>, Abandoned) -> F,
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let (queue, receiver) = tokio::sync::mpsc::channel(SINK_QUEUE);
        let abandoned = Abandoned::default();
        Feed {
            rel,
            queue: Some(queue),
            writing: Some(tokio::spawn(writer(receiver, abandoned.clone()))),
            abandoned,
        }
    }

    /// Queues `message` for the writing task; if the task has stopped, its error.
    pub async fn send(&mut self, message: M) -> Result<()> {
        if let Some(tx) = &self.queue
            && tx.send(message).await.is_ok()
        {
            return Ok(());
        }
        self.stopped().await?;
        Err(self.gone())
    }

    /// Waits for the writing task to end and returns its outcome (taken once).
    pub async fn stopped(&mut self) -> Result<()> {
        self.queue = None;
        match self.writing.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Internal(format!("writing {}: {e}", self.rel)))?,
            None => Err(self.gone()),
        }
    }

    fn gone(&self) -> Error {
        Error::Internal(format!("writing {}: the writer has stopped", self.rel))
    }
}

impl ParquetSink {
    /// A sink for one of the run's discrepancy or correction files. Their `key`,
    /// `correction_id`, `source_value` and `replica_value` columns hold a distinct value
    /// on nearly every row, so they are written without a dictionary, which would only
    /// be built to be dropped.
    pub fn discrepancies(layout: &RunLayout, rel: String, schema: SchemaRef) -> Result<Self> {
        let props = ["key", "correction_id", "source_value", "replica_value"]
            .into_iter()
            .fold(properties(128 * 1024), |props, column| {
                props.set_column_dictionary_enabled(ColumnPath::from(column), false)
            });
        Self::with_properties(&layout.output, rel, schema, props)
    }

    /// A sink for one of the run's correction files. Their rows are the rows that
    /// differ, whose values are mostly distinct, twice (the values set and the values
    /// expected): only `op` is written with a dictionary.
    pub fn corrections(layout: &RunLayout, rel: String, schema: SchemaRef) -> Result<Self> {
        let props = properties(128 * 1024)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("op"), true);
        Self::with_properties(&layout.output, rel, schema, props)
    }

    /// A sink for `rel` below `base`, with row groups of at most `row_group_rows`.
    pub fn create(
        base: &Location,
        rel: String,
        schema: SchemaRef,
        row_group_rows: usize,
    ) -> Result<Self> {
        Self::with_properties(base, rel, schema, properties(row_group_rows))
    }

    fn with_properties(
        base: &Location,
        rel: String,
        schema: SchemaRef,
        props: WriterPropertiesBuilder,
    ) -> Result<Self> {
        let path = base.child(&rel).prefix;
        let props = props.build();
        let object = BufWriter::new(Arc::clone(&base.store), path.clone());
        let mut writer = AsyncArrowWriter::try_new(object, schema, Some(props))
            .map_err(|e| Error::bug(format!("creating {rel}"), e))?;
        let name = rel.clone();
        let feed = Feed::spawn(rel, move |mut queue, abandoned| async move {
            while let Some(message) = queue.recv().await {
                if abandoned.is_set() {
                    break;
                }
                match message {
                    SinkMessage::Batch(batch) => {
                        if let Err(e) = writer.write(&batch).await {
                            let _ = writer.into_inner().abort().await;
                            return Err(parquet_write_error(&name, e));
                        }
                    }
                    SinkMessage::Close => {
                        writer
                            .close()
                            .await
                            .map_err(|e| parquet_write_error(&name, e))?;
                        return Ok(());
                    }
                }
            }
            // The sink was dropped unfinished: the upload is aborted, never completed.
            if let Err(e) = writer.into_inner().abort().await {
                tracing::warn!("aborting the upload of {name}: {e}");
            }
            Ok(())
        });
        Ok(ParquetSink {
            path,
            store: Arc::clone(&base.store),
            feed,
            rows: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Completes the upload; returns the rows written and the object's size.
    pub async fn close(mut self) -> Result<(u64, u64)> {
        self.feed.send(SinkMessage::Close).await?;
        self.feed.stopped().await?;
        let meta = self.store.head(&self.path).await?;
        Ok((self.rows, meta.size))
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.feed.send(SinkMessage::Batch(batch.clone())).await
    }

    /// Completes the upload and returns the file's manifest entry.
    pub async fn finish(self, entry: FileEntry) -> Result<ManifestFile> {
        let rel = self.feed.rel.clone();
        let (rows, size) = self.close().await?;
        Ok(ManifestFile {
            path: rel,
            kind: entry.kind.into(),
            entity: entry.entity,
            system: entry.system,
            rows: Some(rows),
            size,
        })
    }
}

/// While writing, the only outside party is the object store behind the sink: an
/// external or I/O error from the Parquet writer is a storage failure.
fn parquet_write_error(rel: &str, e: parquet::errors::ParquetError) -> Error {
    use parquet::errors::ParquetError;
    match e {
        ParquetError::External(_) => Error::Storage {
            location: rel.to_string(),
            source: object_store::Error::Generic {
                store: "output",
                source: e.to_string().into(),
            },
        },
        e => Error::bug(format!("writing {rel}"), e),
    }
}

/// What a file is, for its manifest entry.
pub struct FileEntry {
    pub kind: &'static str,
    pub entity: Option<String>,
    pub system: Option<String>,
}

/// One file of a committed run, relative to the job's output prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    pub path: String,
    /// `discrepancies`, `corrections` or `summary`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rows: Option<u64>,
    pub size: u64,
}

/// The commit marker of a run: written last; a run without one does not exist.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub job: String,
    pub run_id: String,
    pub run_date: NaiveDate,
    pub committed_at: DateTime<Utc>,
    /// `success` or `guardrail_tripped`.
    pub status: String,
    pub source: String,
    pub replica: String,
    /// Entities parents first: inserts and updates go in this order, deletes in reverse.
    pub apply_order: Vec<String>,
    /// Entities whose corrections a guardrail withheld.
    pub withheld: Vec<String>,
    pub files: Vec<ManifestFile>,
}

/// Writes small JSON objects (summary, manifest, pointer) in one put.
pub async fn put_json<T: Serialize>(layout: &RunLayout, rel: &str, value: &T) -> Result<u64> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::bug(format!("serialising {rel}"), e))?;
    let size = bytes.len() as u64;
    layout
        .output
        .store
        .put(&layout.path(rel), PutPayload::from(bytes))
        .await?;
    Ok(size)
}

/// Reads a small JSON object below `output`; `None` when it does not exist.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    output: &Location,
    rel: &str,
) -> Result<Option<T>> {
    let location = output.child(rel);
    let bytes = match location.store.get(&location.prefix).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::BadFile {
            path: location.url(),
            message: format!("not what recon wrote there (damaged or edited?): {e}"),
        })
}

/// Pointer to the newest committed run of a run date, rewritten after each commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatestPointer {
    pub run_id: String,
    pub manifest: String,
}

/// Removes every file under the run's own folders (discrepancies, corrections, events,
/// summary) when the run is not committed: after a run stopped part way, by a signal,
/// which leaves no list of what it wrote. A committed run (its manifest present) is
/// never touched.
pub async fn remove_uncommitted(layout: &RunLayout) {
    match layout
        .output
        .store
        .head(&layout.path(&layout.manifest()))
        .await
    {
        Err(object_store::Error::NotFound { .. }) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the run committed; its files are left in place");
            return;
        }
    }
    // On local files the folders go whole, with the staging files of unfinished
    // uploads, which a listing does not show.
    if let Some(root) = layout.output.local_path() {
        for kind in RUN_FOLDERS {
            let dir = root.join(format!("{kind}/{}", layout.part()));
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(folder = %dir.display(), error = %e, "could not remove uncommitted files");
            }
        }
        return;
    }
    let mut rels = Vec::new();
    for kind in RUN_FOLDERS {
        let prefix = layout.path(&format!("{kind}/{}", layout.part()));
        let mut listing = layout.output.store.list(Some(&prefix));
        while let Some(meta) = futures::StreamExt::next(&mut listing).await {
            match meta {
                Ok(meta) => rels.push(meta.location),
                Err(e) => {
                    tracing::warn!(error = %e, "could not list the run's files to remove them")
                }
            }
        }
    }
    for path in rels {
        match layout.output.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(file = %path, error = %e, "could not remove uncommitted file"),
        }
    }
}

/// The kinds of folder a run writes under `{kind}/run_date=D/run_id=R/`.
const RUN_FOLDERS: [&str; 4] = ["discrepancies", "corrections", "events", "runs"];

/// Removes what runs of this run date that never committed left behind (a killed
/// process cleans nothing up): every `run_id=…` folder without a manifest, staging files
/// included on local files. Only for a run holding the date's lock, so no other run of
/// the date is under way; a committed run is never touched.
pub async fn remove_abandoned(layout: &RunLayout) {
    let mut abandoned = std::collections::BTreeSet::new();
    for kind in RUN_FOLDERS {
        let prefix = layout.path(&format!("{kind}/run_date={}", layout.run_date));
        let Ok(listing) = layout.output.store.list_with_delimiter(Some(&prefix)).await else {
            continue;
        };
        for folder in listing.common_prefixes {
            if let Some(id) = folder.filename().and_then(|n| n.strip_prefix("run_id=")) {
                abandoned.insert(id.to_string());
            }
        }
    }
    for id in abandoned {
        if id == layout.run_id {
            continue;
        }
        let other = RunLayout {
            run_id: id.clone(),
            ..layout.clone()
        };
        match layout
            .output
            .store
            .head(&other.path(&other.manifest()))
            .await
        {
            Err(object_store::Error::NotFound { .. }) => {}
            _ => continue,
        }
        tracing::info!(run_id = %id, "removing the files of an earlier run that never committed");
        remove_uncommitted(&other).await;
    }
}

/// Best-effort removal of files a failed or withheld run wrote.
pub async fn remove(layout: &RunLayout, rels: &[String]) {
    for rel in rels {
        match layout.output.store.delete(&layout.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(file = %rel, error = %e, "could not remove uncommitted file"),
        }
    }
}

/// The run dates before `before` that have a `run_date=…` folder under `{output}/{kind}/`
/// (`runs`, `applies`), newest first; none when the folder does not exist.
pub async fn earlier_run_dates(
    output: &Location,
    kind: &str,
    before: NaiveDate,
) -> Result<Vec<NaiveDate>> {
    let folder = output.child(kind);
    let listing = match folder.store.list_with_delimiter(Some(&folder.prefix)).await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut dates: Vec<NaiveDate> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.strip_prefix("run_date=")?.parse().ok())
        .filter(|d| *d < before)
        .collect();
    dates.sort_unstable_by(|a, b| b.cmp(a));
    Ok(dates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap()
    }

    #[tokio::test]
    async fn a_sink_commits_on_finish_only_and_reports_its_writer_failing() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let base = crate::store::open(url.as_str()).unwrap();
        let b = batch();

        let mut sink = ParquetSink::create(&base, "done.parquet".into(), b.schema(), 2).unwrap();
        sink.write(&b).await.unwrap();
        sink.write(&b).await.unwrap();
        let (rows, size) = sink.close().await.unwrap();
        assert_eq!(rows, 6);
        assert_eq!(
            size,
            std::fs::metadata(dir.path().join("done.parquet"))
                .unwrap()
                .len()
        );

        let mut sink = ParquetSink::create(&base, "dropped.parquet".into(), b.schema(), 2).unwrap();
        sink.write(&b).await.unwrap();
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!dir.path().join("dropped.parquet").exists());

        // A file where the sink's folder should be: the upload fails when it completes.
        std::fs::write(dir.path().join("blocked"), b"").unwrap();
        let mut sink =
            ParquetSink::create(&base, "blocked/x.parquet".into(), b.schema(), 2).unwrap();
        sink.write(&b).await.unwrap();
        let err = sink.close().await.unwrap_err();
        assert!(matches!(err, Error::Storage { .. }), "{err}");
        assert!(err.to_string().contains("blocked/x.parquet"), "{err}");
    }
}
