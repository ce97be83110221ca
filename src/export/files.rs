//! Files already in the lake (CSV, NDJSON, Parquet), read with DataFusion and rewritten
//! in the snapshot layout: one Parquet file per entity, the declared column types applied.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, col};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::info;

use super::builder::schema_of;
use super::config::{ExportSpec, ExporterConfig, FileFormat};
use super::{EntityWriter, Target, data_error};
use crate::error::{Error, Result};
use crate::job::JobConfig;
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
        let url = crate::run::fill_placeholders(&spec.url, run_date, system, &entity);
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
                if let Some(s) = &declared {
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
                            .map(|c| col(format!("\"{}\"", c.name)).cast_to(&c.data_type, df.schema()).map(|e| e.alias(&c.name)))
                            .collect::<datafusion::error::Result<Vec<_>>>()
                            .map_err(fail)?;
                        df.select(exprs).map_err(fail)?
                    }
                }
            }
        };
        let schema = df.schema().inner().clone();
        let mut stream = df.execute_stream().await.map_err(fail)?;
        let mut writer = EntityWriter::new(target, schema, format!("{:?} {url}", spec.format).to_lowercase(), exporter.batch_rows)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| match e {
                datafusion::error::DataFusionError::ObjectStore(source) => Error::Storage {
                    location: url.clone(),
                    source: *source,
                },
                e => fail(e),
            })?;
            writer.write(&batch).await?;
        }
        info!(system, entity = %entity, rows = writer.rows(), "exported");
        writer.finish(target).await?;
    }
    Ok(BTreeMap::new())
}
