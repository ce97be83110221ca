//! Files already in the lake (CSV, NDJSON, Parquet), read with DataFusion and rewritten
//! in the snapshot layout: one Parquet file per entity, the declared column types applied.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use chrono::NaiveDate;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, col};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::info;

use super::builder::{ColumnBuilder, schema_of};
use super::{EntityWriter, Target, data_error};
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::job::exporters::{ExportSpec, ExporterConfig, FileFormat};
use crate::store;

pub(crate) async fn export(
    _job: &JobConfig,
    exporter: &ExporterConfig,
    run_date: NaiveDate,
    targets: &mut [Target<'_>],
) -> Result<BTreeMap<String, String>> {
    let system = exporter.system.as_str();
    for target in targets.iter_mut() {
        let entity = target.entity.name.clone();
        let ExportSpec::Files(spec) = target.spec else {
            unreachable!("validated")
        };
        let url = crate::snapshot::layout::fill_placeholders(&spec.url, run_date, system, &entity);
        let location = store::open(&url)?;
        let ctx = SessionContext::new();
        location.register(&ctx);
        let fail = |e: datafusion::error::DataFusionError| {
            data_error(system, &entity, format!("reading {url}: {e}"))
        };
        // A file keeps its own extension; a folder's files need the format's usual one.
        let ext = match url.rsplit('/').next().and_then(|n| n.rsplit_once('.')) {
            Some((_, e)) => format!(".{e}"),
            None => match spec.format {
                FileFormat::Csv => ".csv".into(),
                FileFormat::Ndjson => ".json".into(),
                FileFormat::Parquet => ".parquet".into(),
            },
        };
        // An absent input is an error, never an empty snapshot.
        let found = if url.rsplit('/').next().is_some_and(|n| n.contains('.')) {
            match location.store.head(&location.prefix).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(source) => {
                    return Err(Error::Storage {
                        location: url.clone(),
                        source,
                    });
                }
            }
        } else {
            let listed: Vec<_> = location
                .store
                .list(Some(&location.prefix))
                .try_collect()
                .await
                .map_err(|source| Error::Storage {
                    location: url.clone(),
                    source,
                })?;
            listed
                .iter()
                .any(|o| o.location.as_ref().ends_with(ext.as_str()))
        };
        if !found {
            return Err(data_error(
                system,
                &entity,
                format!("no {ext} file at {url}"),
            ));
        }
        let declared = spec
            .columns
            .as_ref()
            .map(|c| schema_of(c.iter().map(|c| (c.name.clone(), c.data_type.clone()))));
        let df = match spec.format {
            FileFormat::Csv => {
                let mut o = CsvReadOptions::new()
                    .has_header(spec.has_header)
                    .delimiter(spec.delimiter)
                    .file_extension(&ext);
                // Declared decimals are read as text and parsed exactly below: the CSV
                // reader would round excess fractional digits silently.
                let as_read = declared.as_ref().map(|s| {
                    schema_of(s.fields().iter().map(|f| {
                        let t = match f.data_type() {
                            DataType::Decimal128(..) => DataType::Utf8,
                            t => t.clone(),
                        };
                        (f.name().clone(), t)
                    }))
                });
                if let Some(s) = &as_read {
                    o = o.schema(s.as_ref());
                }
                ctx.read_csv(url.as_str(), o).await.map_err(fail)?
            }
            FileFormat::Ndjson => {
                let mut o = JsonReadOptions::default().file_extension(&ext);
                if let Some(s) = &declared {
                    o = o.schema(s.as_ref());
                }
                ctx.read_json(url.as_str(), o).await.map_err(fail)?
            }
            FileFormat::Parquet => {
                let o = ParquetReadOptions::default().file_extension(&ext);
                let df = ctx.read_parquet(url.as_str(), o).await.map_err(fail)?;
                match &spec.columns {
                    None => df,
                    Some(cols) => {
                        let exprs = cols
                            .iter()
                            .map(|c| {
                                col(format!("\"{}\"", c.name))
                                    .cast_to(&c.data_type, df.schema())
                                    .map(|e| e.alias(&c.name))
                            })
                            .collect::<datafusion::error::Result<Vec<_>>>()
                            .map_err(fail)?;
                        df.select(exprs).map_err(fail)?
                    }
                }
            }
        };
        let schema = match (&spec.format, &declared) {
            (FileFormat::Csv, Some(d)) => d.clone(),
            _ => df.schema().inner().clone(),
        };
        let mut stream = df.execute_stream().await.map_err(fail)?;
        let mut writer = EntityWriter::new(
            target,
            schema.clone(),
            format!("{:?} {url}", spec.format).to_lowercase(),
            exporter.batch_rows,
        )?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| match e {
                datafusion::error::DataFusionError::ObjectStore(source) => Error::Storage {
                    location: url.clone(),
                    source: *source,
                },
                e => fail(e),
            })?;
            let batch = if spec.format == FileFormat::Csv && declared.is_some() {
                exact_decimals(&batch, &schema)
                    .map_err(|m| data_error(system, &entity, format!("reading {url}: {m}")))?
            } else {
                batch
            };
            writer.write(&batch).await?;
        }
        info!(system, entity = %entity, rows = writer.rows(), "exported");
        writer.finish(target).await?;
    }
    Ok(BTreeMap::new())
}

/// Parses the text columns that are declared decimals into exact Decimal128 values;
/// a value with more fractional digits than the scale is an error, never a rounding.
fn exact_decimals(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, String> {
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (i, field) in schema.fields().iter().enumerate() {
        let array = batch.column(i);
        match field.data_type() {
            DataType::Decimal128(..) => {
                let text = array
                    .as_string_opt::<i32>()
                    .ok_or_else(|| format!("column `{}` was not read as text", field.name()))?;
                let mut b =
                    ColumnBuilder::new(field.data_type(), text.len()).expect("decimal builder");
                for v in text.iter() {
                    match v {
                        None => b.append_null(),
                        Some(t) if t.trim().is_empty() => b.append_null(),
                        Some(t) => b
                            .append_text(t)
                            .map_err(|m| format!("column `{}`: {m}", field.name()))?,
                    }
                }
                columns.push(b.finish());
            }
            _ => columns.push(array.clone()),
        }
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}
