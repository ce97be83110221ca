//! The snapshot manifest: `_manifest.json` in a snapshot folder, the commit marker of
//! an export. A reader of a folder with a manifest reads exactly the files it lists.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Location;
use crate::write::MANIFEST_FILE;

/// Version of the snapshot manifest format; readers refuse newer versions.
pub const SNAPSHOT_MANIFEST_FORMAT: u32 = 1;

/// The commit marker of one entity's snapshot, `_manifest.json` in its folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format_version: u32,
    pub job: String,
    pub system: String,
    pub entity: String,
    pub run_date: NaiveDate,
    pub export_id: String,
    /// postgres, mysql, http or files.
    pub exporter: String,
    /// The table, query, endpoint or files read.
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub rows: u64,
    pub files: Vec<SnapshotManifestFile>,
    /// Arrow schema of the files: one entry per column.
    pub schema: Vec<ManifestColumn>,
    /// Where the source stood when it was read (database snapshot position), if known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub watermark: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotManifestFile {
    /// Relative to the snapshot folder.
    pub path: String,
    pub rows: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestColumn {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

/// Commits a snapshot folder: its manifest, written after every file it lists.
pub async fn put_manifest(location: &Location, manifest: &SnapshotManifest) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::bug("serialising snapshot manifest", e))?;
    let path = location.child(MANIFEST_FILE).prefix;
    location
        .store
        .put(&path, bytes.into())
        .await
        .map_err(|source| Error::Storage {
            location: location.child(MANIFEST_FILE).url(),
            source,
        })?;
    Ok(())
}

/// Reads a snapshot folder's manifest; `None` when the folder has none.
pub async fn read_manifest(location: &Location) -> Result<Option<SnapshotManifest>> {
    let child = location.child(MANIFEST_FILE);
    let bytes = match child.store.get(&child.prefix).await {
        Ok(r) => r.bytes().await.map_err(|source| Error::Storage {
            location: child.url(),
            source,
        })?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => {
            return Err(Error::Storage {
                location: child.url(),
                source,
            });
        }
    };
    let manifest: SnapshotManifest =
        serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path: child.url(),
            message: format!("not a snapshot manifest: {e}"),
        })?;
    if manifest.format_version > SNAPSHOT_MANIFEST_FORMAT {
        return Err(Error::BadFile {
            path: child.url(),
            message: format!(
                "format version {}, newer than this recon reads ({SNAPSHOT_MANIFEST_FORMAT}): upgrade recon",
                manifest.format_version
            ),
        });
    }
    Ok(Some(manifest))
}
