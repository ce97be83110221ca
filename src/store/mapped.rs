//! Local files read by mapping them: [`MappedFiles`], the store behind `file://` URLs.
//!
//! object_store's [`LocalFileSystem`] reads each byte range a Parquet reader asks for
//! into a new buffer, which it first fills with zeros and then copies the file's pages
//! into from the page cache. On a snapshot pair that is already in the page cache
//! (the usual case on a laptop, and every night's second entity on a server) the
//! zeroing and the copy are a few percent of the diff's CPU time. This store maps the
//! ranges instead: the buffers handed to the reader are the page cache's own pages,
//! faulted in at once (`MAP_POPULATE`) and unmapped when the last slice of them is
//! dropped. Everything else (listing, writing, renaming, deleting) is
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

/// Ranges closer than this share one mapping.
const GAP: u64 = 64 * 1024;

/// The bytes of `ranges` of the file at `path`, mapped: one mapping per run of ranges
/// less than [`GAP`] apart, so that a query reading a few columns does not fault in the
/// others. A range past the end of the file is an error, as in [`LocalFileSystem`]; a
/// file that cannot be mapped (some network and FUSE file systems) is read instead.
fn map_ranges(path: &std::path::Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
    let error = |e: String| object_store::Error::Generic {
        store: "MappedFiles",
        source: e.into(),
    };
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: path.display().to_string(),
            source: e.into(),
        },
        _ => error(format!("cannot open {}: {e}", path.display())),
    })?;
    let size = file
        .metadata()
        .map_err(|e| error(format!("cannot stat {}: {e}", path.display())))?
        .len();
    if let Some(r) = ranges.iter().find(|r| r.start > r.end || r.end > size) {
        return Err(error(format!(
            "range {}..{} is outside {} ({size} bytes)",
            r.start,
            r.end,
            path.display()
        )));
    }
    let mut order: Vec<usize> = (0..ranges.len())
        .filter(|&i| !ranges[i].is_empty())
        .collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut out = vec![Bytes::new(); ranges.len()];
    let page = page_size();
    let mut at = 0;
    while at < order.len() {
        // The run of ranges starting at `at`, and the span it covers.
        let (offset, mut end, mut next) = (ranges[order[at]].start, ranges[order[at]].end, at + 1);
        while next < order.len() && ranges[order[next]].start <= end.saturating_add(GAP) {
            end = end.max(ranges[order[next]].end);
            next += 1;
        }
        // A mapping starts on a page boundary.
        let offset = offset - offset % page;
        let span = map(&file, offset, end).or_else(|e| {
            tracing::debug!("reading {} instead of mapping it: {e}", path.display());
            read(&file, offset, end)
        });
        let span = span.map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
        for &i in &order[at..next] {
            let r = &ranges[i];
            out[i] = span.slice((r.start - offset) as usize..(r.end - offset) as usize);
        }
        at = next;
    }
    Ok(out)
}

/// Bytes `offset..end` of `file`, mapped and faulted in.
fn map(file: &File, offset: u64, end: u64) -> std::io::Result<Bytes> {
    // SAFETY: the mapping is read-only and private, and it is only read through the
    // slices returned. The file must not shrink while they live (a read of a page past
    // the new end raises SIGBUS); see the module documentation for why snapshots do not.
    let map = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len((end - offset) as usize)
            .populate()
            .map(file)
    }?;
    Ok(Bytes::from_owner(map))
}

/// Bytes `offset..end` of `file`, read into a buffer.
fn read(file: &File, offset: u64, end: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; (end - offset) as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
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
        // Mapping with MAP_POPULATE reads the pages in: off the async threads when there
        // are any, as LocalFileSystem does.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || map_ranges(&path, &ranges))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "MappedFiles",
                    source: e.into(),
                })?,
            Err(_) => map_ranges(&path, &ranges),
        }
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
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f.bin"), &data).unwrap();
        let store = MappedFiles::default();
        let path = Path::from_filesystem_path(dir.path().join("f.bin")).unwrap();
        // Unsorted, overlapping, empty, and one more than GAP from the others (a mapping
        // of its own).
        let ranges = [
            5000..5000,
            4097..9000,
            0..3,
            19_990..20_000,
            12_000..16_384,
            6000..7000,
            150_001..199_999,
        ];
        let got = store.get_ranges(&path, &ranges).await.unwrap();
        for (r, b) in ranges.iter().zip(&got) {
            assert_eq!(&b[..], &data[r.start as usize..r.end as usize], "{r:?}");
        }

        // The reading fallback, for file systems that cannot map.
        let file = File::open(dir.path().join("f.bin")).unwrap();
        assert_eq!(&read(&file, 4096, 9000).unwrap()[..], &data[4096..9000]);

        let past = store
            .get_ranges(&path, &[0..1, 190_000..200_001])
            .await
            .unwrap_err();
        assert!(past.to_string().contains("outside"), "{past}");
        let missing = Path::from_filesystem_path(dir.path()).unwrap().join("none");
        let err = store.get_ranges(&missing, &[0..1, 2..3]).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    }
}
