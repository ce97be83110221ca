//! The input contract. Snapshots: lists the Parquet files of one system's entity, reads
//! every footer (schema, row count, identity) before any query runs, and registers them
//! as a table; where they are ([`layout`]) and the manifest an export commits them with
//! ([`manifest`]).

pub mod layout;
pub mod manifest;

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use object_store::ObjectStoreExt;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::errors::ParquetError;
use parquet::file::metadata::{FooterTail, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::Location;

/// One system's snapshot of one entity, as found in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub system: String,
    pub url: String,
    pub rows: u64,
    /// Uncompressed size of all row groups, from the footers.
    pub bytes: u64,
    /// Never empty in a run's `summary.json`; `recon run --format json` leaves it out
    /// unless asked (`--list-inputs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<SnapshotFile>,
    /// The export that wrote the snapshot, when recon exported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    #[serde(skip)]
    pub schema: SchemaRef,
    #[serde(skip)]
    pub location: Location,
    /// Each file's footer, in the order of `files`.
    #[serde(skip)]
    pub footers: Vec<Arc<ParquetMetaData>>,
}

/// What a snapshot's row-group statistics say of its order by the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsOrder {
    /// Every row group's keys come after all of the previous row group's, file after
    /// file: the rows are in key order unless some are out of order within a row group.
    RowGroupsAscend,
    /// Two consecutive row groups' key ranges overlap or go backwards: the rows are not
    /// in strictly ascending key order.
    Unordered,
    /// The statistics cannot tell: a composite key, a key type whose statistics do not
    /// order as recon compares it, or statistics missing from a row group.
    Unknown,
}

/// The identity of one input file, recorded in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotFile {
    pub path: String,
    pub size: u64,
    pub rows: u64,
    pub last_modified: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

impl Snapshot {
    /// Lists and checks the snapshot at `location`: either one `.parquet` object or every
    /// `.parquet` object below the prefix (names starting with `_` or `.` are skipped).
    /// A folder with a snapshot manifest (`_manifest.json`, written by `recon export`)
    /// is read as exactly the files the manifest lists; `exported` says the folder must
    /// have one, because recon exports this system.
    pub async fn open(
        location: Location,
        entity: &str,
        system: &str,
        exported: bool,
    ) -> Result<Self> {
        let url = location.url();
        let store = Arc::clone(&location.store);
        let manifest = if url.ends_with(".parquet") {
            None
        } else {
            manifest::read_manifest(&location).await?
        };
        if manifest.is_none() && exported {
            return Err(Error::Snapshot {
                entity: entity.into(),
                system: system.into(),
                message: format!(
                    "{url} has no _manifest.json, so its export did not complete; run `recon export` for this run date"
                ),
            });
        }
        let mut objects: Vec<ObjectMeta> = if url.ends_with(".parquet") {
            match store.head(&location.prefix).await {
                Ok(m) => vec![m],
                Err(object_store::Error::NotFound { .. }) => vec![],
                Err(e) => return Err(e.into()),
            }
        } else {
            store
                .list(Some(&location.prefix))
                .try_filter(|m| {
                    // Only parts below the prefix count: `_SUCCESS`, `.tmp/`, `_staging/`.
                    let name = m.location.filename().unwrap_or("");
                    let hidden =
                        m.location
                            .prefix_match(&location.prefix)
                            .is_some_and(|mut parts| {
                                parts.any(|p| {
                                    p.as_ref().starts_with('_') || p.as_ref().starts_with('.')
                                })
                            });
                    futures::future::ready(name.ends_with(".parquet") && !hidden)
                })
                .try_collect()
                .await?
        };
        if let Some(m) = &manifest {
            let wanted: Vec<object_store::path::Path> = m
                .files
                .iter()
                .map(|f| location.child(&f.path).prefix)
                .collect();
            objects.retain(|o| wanted.contains(&o.location));
            if let Some(missing) = wanted
                .iter()
                .find(|w| !objects.iter().any(|o| &o.location == *w))
            {
                return Err(Error::Snapshot {
                    entity: entity.into(),
                    system: system.into(),
                    message: format!(
                        "its _manifest.json lists {}{missing}, which is missing",
                        location.root.as_str()
                    ),
                });
            }
        }
        if objects.is_empty() {
            return Err(Error::MissingSnapshot {
                entity: entity.into(),
                system: system.into(),
                url,
            });
        }
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let root = location.root.as_str();
        let footers: Vec<(ObjectMeta, Footer)> =
            futures::stream::iter(objects.into_iter().map(|meta| {
                let store = Arc::clone(&store);
                async move {
                    let footer = read_footer(store.as_ref(), &meta)
                        .await
                        .map_err(|e| match e {
                            FooterError::Store(source) => Error::Storage {
                                location: format!("{root}{}", meta.location),
                                source,
                            },
                            FooterError::Parquet(source) => Error::CorruptFile {
                                entity: entity.into(),
                                system: system.into(),
                                path: format!("{root}{}", meta.location),
                                source,
                            },
                        })?;
                    Ok::<_, Error>((meta, footer))
                }
            }))
            .buffered(8)
            .try_collect()
            .await?;

        let schema = Arc::clone(&footers[0].1.schema);
        // A column is found by its name: two of one name cannot be told apart.
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = schema.fields().iter().find(|f| !names.insert(f.name())) {
            return Err(Error::Snapshot {
                entity: entity.into(),
                system: system.into(),
                message: format!(
                    "file {root}{} has two columns named `{}`; rename one in the export",
                    footers[0].0.location,
                    twice.name()
                ),
            });
        }
        let mut files = Vec::with_capacity(footers.len());
        let mut metadata = Vec::with_capacity(footers.len());
        let mut rows = 0u64;
        let mut bytes = 0u64;
        for (meta, footer) in &footers {
            check_same_schema(&schema, &footer.schema).map_err(|message| Error::Snapshot {
                entity: entity.into(),
                system: system.into(),
                message: format!(
                    "file {root}{} does not match {root}{}: {message}",
                    meta.location, footers[0].0.location
                ),
            })?;
            let n = footer.rows;
            rows += n;
            bytes += footer.bytes;
            metadata.push(Arc::clone(&footer.metadata));
            files.push(SnapshotFile {
                path: meta.location.to_string(),
                size: meta.size,
                rows: n,
                last_modified: meta.last_modified,
                e_tag: meta.e_tag.clone(),
            });
        }
        let schema = Arc::new(Schema::new(schema.fields().clone()));
        Ok(Snapshot {
            system: system.into(),
            url,
            rows,
            bytes,
            files,
            export_id: manifest.map(|m| m.export_id),
            schema,
            location,
            footers: metadata,
        })
    }

    /// What the row groups' minimum and maximum of the key say of the rows' order,
    /// taking the files in the order of `files`, which is the order the scan reads them
    /// in (by path). Only a key of one integer, date or timestamp column is judged:
    /// their statistics are exact and order as the key merge compares them.
    pub fn key_order(&self, key: &[&str]) -> StatsOrder {
        let [key] = key else {
            return StatsOrder::Unknown;
        };
        let ordered = self.schema.field_with_name(key).is_ok_and(|f| {
            matches!(
                f.data_type(),
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Date32
                    | DataType::Date64
                    | DataType::Timestamp(..)
            )
        });
        if !ordered {
            return StatsOrder::Unknown;
        }
        let mut last: Option<i64> = None;
        for footer in &self.footers {
            let Some(column) = footer
                .file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.path().parts() == [key.to_string()])
            else {
                return StatsOrder::Unknown;
            };
            for group in footer.row_groups() {
                let chunk = group.column(column);
                // A row group whose keys are all NULL holds no row the merge reads.
                let rows = group.num_rows().max(0) as u64;
                if chunk.statistics().and_then(|s| s.null_count_opt()) == Some(rows) {
                    continue;
                }
                let range = match chunk.statistics() {
                    Some(Statistics::Int32(s)) if s.min_is_exact() && s.max_is_exact() => s
                        .min_opt()
                        .zip(s.max_opt())
                        .map(|(a, b)| (i64::from(*a), i64::from(*b))),
                    Some(Statistics::Int64(s)) if s.min_is_exact() && s.max_is_exact() => {
                        s.min_opt().zip(s.max_opt()).map(|(a, b)| (*a, *b))
                    }
                    _ => return StatsOrder::Unknown,
                };
                let Some((min, max)) = range else {
                    return StatsOrder::Unknown;
                };
                if last.is_some_and(|l| l >= min) {
                    return StatsOrder::Unordered;
                }
                last = Some(max);
            }
        }
        StatsOrder::RowGroupsAscend
    }

    /// Whether a float column of some file has statistics that DataFusion would read
    /// as a constant column although the file may hold NaN: Parquet's statistics leave
    /// NaN out, so a file of NaN and 1e20 says min = max = 1e20 (and -0.0 with 0.0
    /// says min = max as well). A Float16 column with statistics counts too.
    pub fn may_hide_nan(&self) -> bool {
        use parquet::basic::{LogicalType, Type};
        self.footers.iter().any(|footer| {
            let schema = footer.file_metadata().schema_descr();
            (0..schema.num_columns()).any(|c| {
                let column = schema.column(c);
                let float16 = matches!(column.logical_type_ref(), Some(LogicalType::Float16));
                if !(matches!(column.physical_type(), Type::FLOAT | Type::DOUBLE) || float16) {
                    return false;
                }
                if float16 {
                    return true;
                }
                // The file's range over its row groups. A row group without one (NaN
                // only) would leave the others' range to stand for the file: a risk.
                let mut range: Option<(f64, f64)> = None;
                for group in footer.row_groups() {
                    let rows = group.num_rows().max(0) as u64;
                    let stats = group.column(c).statistics();
                    let (min, max) = match stats {
                        Some(Statistics::Float(s)) => (
                            s.min_opt().map(|v| f64::from(*v)),
                            s.max_opt().map(|v| f64::from(*v)),
                        ),
                        Some(Statistics::Double(s)) => (s.min_opt().copied(), s.max_opt().copied()),
                        _ => return true,
                    };
                    match (min, max) {
                        (Some(min), Some(max)) => {
                            range = Some(match range {
                                None => (min, max),
                                Some((lo, hi)) => (lo.min(min), hi.max(max)),
                            });
                        }
                        // NULL throughout: nothing hidden.
                        _ if stats.and_then(|s| s.null_count_opt()) == Some(rows) => {}
                        _ => return true,
                    }
                }
                range.is_some_and(|(lo, hi)| lo == hi)
            })
        })
    }

    /// The URLs of the snapshot's checked files.
    fn file_urls(&self) -> datafusion::error::Result<Vec<ListingTableUrl>> {
        let root = self.location.root.as_str();
        self.files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{root}{}", f.path)))
            .collect()
    }

    /// The object paths of the snapshot's files, as the query plan's scans name them.
    pub fn object_paths(&self) -> std::collections::HashSet<object_store::path::Path> {
        self.file_urls()
            .unwrap_or_default()
            .iter()
            .map(|u| u.prefix().clone())
            .collect()
    }

    /// Registers exactly the checked files as table `name` in `ctx`, its strings read as
    /// views ([`scan_schema`]).
    pub fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        self.location.register(ctx);
        let urls = self
            .file_urls()
            .map_err(|e| Error::query(format!("registering snapshot {}", self.url), e))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(Arc::new(scan_schema(&self.schema)));
        let table = ListingTable::try_new(config)
            .map_err(|e| Error::query(format!("registering snapshot {}", self.url), e))?;
        ctx.register_table(name, Arc::new(table))
            .map_err(|e| Error::query(format!("registering snapshot {}", self.url), e))?;
        Ok(())
    }
}

/// What a file's footer says: its Arrow schema and row count.
struct Footer {
    schema: SchemaRef,
    metadata: Arc<ParquetMetaData>,
    rows: u64,
    bytes: u64,
}

enum FooterError {
    Store(object_store::Error),
    Parquet(ParquetError),
}

/// Reads a Parquet footer with two ranged reads: the 8-byte tail, then the metadata.
async fn read_footer(
    store: &dyn object_store::ObjectStore,
    meta: &ObjectMeta,
) -> std::result::Result<Footer, FooterError> {
    let corrupt = |m: String| FooterError::Parquet(ParquetError::General(m));
    if meta.size < 12 {
        return Err(corrupt(format!(
            "{} bytes is too small for Parquet",
            meta.size
        )));
    }
    let tail = store
        .get_range(&meta.location, meta.size - 8..meta.size)
        .await
        .map_err(FooterError::Store)?;
    let tail: [u8; 8] = tail[..]
        .try_into()
        .map_err(|_| corrupt("short read of the footer".into()))?;
    let tail = FooterTail::try_new(&tail).map_err(FooterError::Parquet)?;
    if tail.is_encrypted_footer() {
        return Err(corrupt("encrypted footers are not supported".into()));
    }
    let len = tail.metadata_length() as u64;
    if len + 8 > meta.size {
        return Err(corrupt(format!(
            "footer length {len} exceeds the file size"
        )));
    }
    let bytes = store
        .get_range(&meta.location, meta.size - 8 - len..meta.size - 8)
        .await
        .map_err(FooterError::Store)?;
    let metadata = ParquetMetaDataReader::decode_metadata(&bytes).map_err(FooterError::Parquet)?;
    let file = metadata.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(FooterError::Parquet)?;
    let bytes = metadata
        .row_groups()
        .iter()
        .map(|g| g.total_byte_size().max(0) as u64)
        .sum();
    let rows = file.num_rows().max(0) as u64;
    Ok(Footer {
        schema: Arc::new(schema),
        metadata: Arc::new(metadata),
        rows,
        bytes,
    })
}

/// Files of one snapshot must agree on column names and types (nullability may differ).
fn check_same_schema(first: &Schema, other: &Schema) -> std::result::Result<(), String> {
    for f in first.fields() {
        match other.field_with_name(f.name()) {
            Err(_) => return Err(format!("column `{}` is missing", f.name())),
            Ok(o) if o.data_type() != f.data_type() => {
                return Err(format!(
                    "column `{}` is {} there but {} here",
                    f.name(),
                    f.data_type(),
                    o.data_type()
                ));
            }
            Ok(_) => {}
        }
    }
    for f in other.fields() {
        if first.field_with_name(f.name()).is_err() {
            return Err(format!("column `{}` is extra", f.name()));
        }
    }
    Ok(())
}

/// The type a snapshot column is read in. Strings are read as views (`Utf8View`), which
/// point into the decoded Parquet pages instead of copying every value into an offset
/// buffer; what recon writes is cast back to the snapshot's declared types, so the output
/// contract does not change. Other types are read as declared.
/// Dictionary-encoded columns are read as their values.
pub fn scan_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        DataType::Dictionary(_, v) => scan_type(v),
        t => t.clone(),
    }
}

/// A snapshot schema as the queries see it: each column in its [`scan_type`].
pub fn scan_schema(schema: &Schema) -> Schema {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(scan_type(f.data_type())))
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Field;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// Writes one Parquet file per entry of `files`, each entry the `id` values of its
    /// row groups (a `name` column beside), and opens the folder as a snapshot.
    async fn snapshot(files: &[&[&[Option<i64>]]]) -> (tempfile::TempDir, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        for (i, groups) in files.iter().enumerate() {
            let file = std::fs::File::create(dir.path().join(format!("part-{i}.parquet"))).unwrap();
            let props = WriterProperties::builder().build();
            let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).unwrap();
            for ids in *groups {
                let names: Vec<Option<String>> =
                    ids.iter().map(|i| i.map(|i| i.to_string())).collect();
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(ids.to_vec())),
                        Arc::new(StringArray::from(names)),
                    ],
                )
                .unwrap();
                w.write(&batch).unwrap();
                w.flush().unwrap();
            }
            w.close().unwrap();
        }
        let url = format!("file://{}", dir.path().display());
        let location = crate::store::open(&url).unwrap();
        let snapshot = Snapshot::open(location, "e", "s", false).await.unwrap();
        (dir, snapshot)
    }

    #[tokio::test]
    async fn key_order_from_row_group_statistics() {
        use StatsOrder::*;
        // Per case: the files, each a list of row groups, each a list of keys.
        type Files<'a> = &'a [&'a [&'a [Option<i64>]]];
        let cases: &[(Files, StatsOrder)] = &[
            // Row groups ascending, within a file and across files.
            (
                &[&[&[Some(1), Some(2)], &[Some(3), Some(9)]], &[&[Some(10)]]],
                RowGroupsAscend,
            ),
            // Disorder within a row group does not show in its statistics.
            (&[&[&[Some(2), Some(1)], &[Some(3)]]], RowGroupsAscend),
            // A row group of NULL keys only is passed over.
            (
                &[&[&[Some(1)], &[None, None], &[Some(2), None]]],
                RowGroupsAscend,
            ),
            // Overlapping ranges, a key repeated across row groups, files out of order.
            (&[&[&[Some(1), Some(5)], &[Some(4), Some(9)]]], Unordered),
            (&[&[&[Some(1), Some(5)], &[Some(5), Some(9)]]], Unordered),
            (&[&[&[Some(10)]], &[&[Some(1)]]], Unordered),
        ];
        for (files, expected) in cases {
            let (_dir, s) = snapshot(files).await;
            assert_eq!(s.key_order(&["id"]), *expected, "{files:?}");
        }
        let (_dir, s) = snapshot(&[&[&[Some(1)], &[Some(2)]]]).await;
        // A composite key, a text key, a column that is not there: the statistics
        // cannot tell.
        assert_eq!(s.key_order(&["id", "name"]), Unknown);
        assert_eq!(s.key_order(&["name"]), Unknown);
        assert_eq!(s.key_order(&["nope"]), Unknown);
    }
}
