//! Local files read by mapping them: [`MappedFiles`], the store behind `file://` URLs.
//!
//! object_store's [`LocalFileSystem`] reads each byte range a Parquet reader asks for
//! into a new buffer, which it first fills with zeros and then copies the file's pages
//! into from the page cache. On a snapshot pair that is already in the page cache
//! (the usual case on a laptop, and every night's second entity on a server) the
//! zeroing and the copy are a few percent of the diff's CPU time. This store maps the
//! ranges instead: the buffers handed to the reader are the page cache's own pages,
//! faulted in once per range (`MAP_POPULATE`) and unmapped when the last slice of them
//! is dropped. Everything else (listing, writing, renaming, deleting) is
//! [`LocalFileSystem`]'s.
//!
//! A mapped file must not shrink while it is being read: a read past its new end kills
//! the process with `SIGBUS` instead of returning an error. Snapshots are written once
//! and replaced whole (recon's own exports write a new file and rename it over the
//! old one, which leaves the mapped file intact), so that does not happen to a lake
//! used as this project intends; and a run killed that way commits nothing, as its
//! outputs are committed only by the manifest. `RECON_LOCAL_MMAP=0` turns mapping off
//! for a lake whose files are rewritten in place.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use memmap2::MmapOptions;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Whether `file://` reads are mapped: on unless `RECON_LOCAL_MMAP` is `0`, `false` or
/// `off`.
pub fn enabled() -> bool {
    !matches!(
        std::env::var("RECON_LOCAL_MMAP").as_deref(),
        Ok("0" | "false" | "off")
    )
}

/// [`LocalFileSystem`] with byte ranges read by mapping them; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct MappedFiles {
    inner: Arc<LocalFileSystem>,
}

impl fmt::Display for MappedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedFiles({})", self.inner)
    }
}

/// The bytes of `ranges` of the file at `path`, from one mapping of the span they
/// cover. A range past the end of the file is an error, as in [`LocalFileSystem`].
fn map_ranges(path: &std::path::Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
    let error = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: "MappedFiles",
        source: e,
    };
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: path.display().to_string(),
            source: e.into(),
        },
        _ => error(format!("cannot open {}: {e}", path.display()).into()),
    })?;
    let size = file
        .metadata()
        .map_err(|e| error(format!("cannot stat {}: {e}", path.display()).into()))?
        .len();
    for r in ranges {
        if r.start > r.end || r.end > size {
            return Err(error(
                format!(
                    "range {}..{} is outside {} ({size} bytes)",
                    r.start,
                    r.end,
                    path.display()
                )
                .into(),
            ));
        }
    }
    let (Some(start), Some(end)) = (
        ranges
            .iter()
            .filter(|r| r.end > r.start)
            .map(|r| r.start)
            .min(),
        ranges.iter().map(|r| r.end).max(),
    ) else {
        return Ok(ranges.iter().map(|_| Bytes::new()).collect());
    };
    // A mapping starts on a page boundary.
    let page = page_size();
    let offset = start - start % page;
    // SAFETY: the mapping is read-only and private, and it is only read through the
    // slices returned. The file must not shrink while they live (a read of a page past
    // the new end raises SIGBUS); see the module documentation for why snapshots do not.
    let map = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len((end - offset) as usize)
            .populate()
            .map(&file)
    }
    .map_err(|e| error(format!("cannot map {}: {e}", path.display()).into()))?;
    let whole = Bytes::from_owner(map);
    Ok(ranges
        .iter()
        .map(|r| {
            if r.end == r.start {
                Bytes::new()
            } else {
                whole.slice((r.start - offset) as usize..(r.end - offset) as usize)
            }
        })
        .collect())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

#[async_trait]
impl ObjectStore for MappedFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let path = self.inner.path_to_filesystem(location)?;
        let ranges = ranges.to_vec();
        tokio::task::spawn_blocking(move || map_ranges(&path, &ranges))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "MappedFiles",
                source: e.into(),
            })?
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mapped_ranges_are_the_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f.bin"), &data).unwrap();
        let store = MappedFiles::default();
        let path = Path::from_filesystem_path(dir.path().join("f.bin")).unwrap();
        let ranges = [5000..5000, 4097..9000, 0..3, 19_990..20_000, 12_000..16_384];
        let got = store.get_ranges(&path, &ranges).await.unwrap();
        for (r, b) in ranges.iter().zip(&got) {
            assert_eq!(&b[..], &data[r.start as usize..r.end as usize], "{r:?}");
        }

        let past = store
            .get_ranges(&path, &[19_000..20_001])
            .await
            .unwrap_err();
        assert!(past.to_string().contains("outside"), "{past}");
        let missing = Path::from_filesystem_path(dir.path()).unwrap().join("none");
        let err = store.get_ranges(&missing, &[0..1]).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    }
}
