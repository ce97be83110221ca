//! Input snapshots: lists the Parquet files of one system's entity, reads every footer
//! (schema, row count, identity) before any query runs, and registers them as a table.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetObjectReader;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::Location;

/// One system's snapshot of one entity, as found in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub system: String,
    pub url: String,
    pub rows: u64,
    pub files: Vec<SnapshotFile>,
    #[serde(skip)]
    pub schema: SchemaRef,
    #[serde(skip)]
    pub location: Location,
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
    pub async fn open(location: Location, entity: &str, system: &str) -> Result<Self> {
        let url = location.url();
        let store = Arc::clone(&location.store);
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
                    let name = m.location.filename().unwrap_or("");
                    let visible = !m
                        .location
                        .parts()
                        .any(|p| p.as_ref().starts_with('_') || p.as_ref().starts_with('.'));
                    futures::future::ready(name.ends_with(".parquet") && visible)
                })
                .try_collect()
                .await?
        };
        if objects.is_empty() {
            return Err(Error::MissingSnapshot {
                entity: entity.into(),
                system: system.into(),
                url,
            });
        }
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let footers: Vec<(ObjectMeta, ArrowReaderMetadata)> =
            futures::stream::iter(objects.into_iter().map(|meta| {
                let store = Arc::clone(&store);
                async move {
                    let mut reader = ParquetObjectReader::new(store, meta.location.clone())
                        .with_file_size(meta.size);
                    let footer =
                        ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
                            .await
                            .map_err(|e| footer_error(e, entity, system, &meta))?;
                    Ok::<_, Error>((meta, footer))
                }
            }))
            .buffered(8)
            .try_collect()
            .await?;

        let schema = Arc::clone(footers[0].1.schema());
        let mut files = Vec::with_capacity(footers.len());
        let mut rows = 0u64;
        for (meta, footer) in &footers {
            check_same_schema(&schema, footer.schema()).map_err(|message| Error::Snapshot {
                entity: entity.into(),
                system: system.into(),
                message: format!(
                    "file {} does not match {}: {message}",
                    meta.location, footers[0].0.location
                ),
            })?;
            let n = footer.metadata().file_metadata().num_rows().max(0) as u64;
            rows += n;
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
            files,
            schema,
            location,
        })
    }

    /// Registers exactly the checked files as table `name` in `ctx`.
    pub fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        self.location.register(ctx);
        let root = self.location.root.as_str().trim_end_matches('/');
        let urls = self
            .files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{root}/{}", f.path)))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(|e| Error::query(format!("registering snapshot {}", self.url), e))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(Arc::clone(&self.schema));
        let table = ListingTable::try_new(config)
            .map_err(|e| Error::query(format!("registering snapshot {}", self.url), e))?;
        ctx.register_table(name, Arc::new(table))
            .map_err(|e| Error::query(format!("registering snapshot {}", self.url), e))?;
        Ok(())
    }
}

fn footer_error(
    e: parquet::errors::ParquetError,
    entity: &str,
    system: &str,
    meta: &ObjectMeta,
) -> Error {
    if let parquet::errors::ParquetError::External(inner) = &e {
        if inner.downcast_ref::<object_store::Error>().is_some() {
            return Error::Storage {
                location: meta.location.to_string(),
                source: object_store::Error::Generic {
                    store: "snapshot",
                    source: e.to_string().into(),
                },
            };
        }
    }
    Error::CorruptFile {
        entity: entity.into(),
        system: system.into(),
        path: meta.location.to_string(),
        source: e,
    }
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
