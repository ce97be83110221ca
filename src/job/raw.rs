//! The job file as written: the TOML tables and keys recon accepts
//! (`deny_unknown_fields`), with their spans for messages. [`super::validate`] turns
//! them into the validated [`super::JobConfig`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::exporters::{RawEntityExport, RawExporter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobFile {
    pub(super) job: RawJob,
    pub(super) systems: RawSystems,
    #[serde(default)]
    pub(super) guardrails: RawGuardrails,
    #[serde(default)]
    pub(super) exporters: BTreeMap<String, Spanned<RawExporter>>,
    #[serde(default)]
    pub(super) entities: Vec<Spanned<RawEntity>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) name: Spanned<String>,
    pub(super) lake: Spanned<String>,
    pub(super) output: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSystems {
    pub(super) source: Spanned<String>,
    pub(super) replica: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuardrails {
    pub(super) max_correction_share: Option<Spanned<f64>>,
    pub(super) max_row_drop: Option<Spanned<f64>>,
}

/// One `[[entities]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntity {
    pub(super) name: String,
    pub(super) key: Vec<String>,
    #[serde(default)]
    pub(super) depends_on: Vec<String>,
    pub(super) deletes: Option<RawDeletes>,
    #[serde(default)]
    pub(super) fields: BTreeMap<String, Spanned<RawField>>,
    #[serde(default)]
    pub(super) rename: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) snapshots: RawSnapshots,
    pub(super) max_correction_share: Option<f64>,
    pub(super) max_row_drop: Option<f64>,
    #[serde(default)]
    pub(super) export: BTreeMap<String, Spanned<RawEntityExport>>,
    pub(super) version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeletes {
    pub(super) policy: String,
    pub(super) column: Option<String>,
    pub(super) deleted_value: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnapshots {
    pub(super) source: Option<String>,
    pub(super) replica: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawField {
    pub(super) owner: Option<String>,
    pub(super) by: Option<String>,
    #[serde(default)]
    pub(super) ignore: bool,
    pub(super) compare: Option<OneOrMany>,
    pub(super) abs_tol: Option<f64>,
    pub(super) rel_tol: Option<f64>,
    pub(super) precision: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}
