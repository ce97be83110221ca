//! One conformance suite for every backend recon runs on: local files, memory, moto's S3
//! server and Garage. What recon relies on: put/get/list, ranged reads (Parquet footers),
//! listing by delimiter (run dates), multipart uploads (large outputs), deletes, and
//! whether conditional creates are honoured (the lock).

use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use recon::store::Location;
use tokio::io::AsyncWriteExt;

use crate::s3::S3Server;

async fn conformance(loc: &Location, honours_conditional_writes: bool) {
    let store = &loc.store;
    let at = |rel: &str| loc.child(rel).prefix;
    for rel in ["a/1.txt", "a/2.txt", "b/3.txt"] {
        store
            .put(&at(rel), PutPayload::from(rel.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    let mut listed: Vec<String> =
        futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&loc.prefix)))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["a/1.txt", "a/2.txt", "b/3.txt"].map(|r| at(r).to_string())
    );
    let dirs = store.list_with_delimiter(Some(&loc.prefix)).await.unwrap();
    let mut dirs: Vec<String> = dirs
        .common_prefixes
        .iter()
        .map(|p| p.filename().unwrap().to_string())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["a", "b"]);
    let range = store.get_range(&at("a/1.txt"), 2..5).await.unwrap();
    assert_eq!(&range[..], b"1.t");

    // A multipart upload: more than one 10 MiB part.
    let big = at("big.bin");
    let mut w = BufWriter::new(std::sync::Arc::clone(store), big.clone());
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..12 {
        w.write_all(&chunk).await.unwrap();
    }
    w.shutdown().await.unwrap();
    assert_eq!(store.head(&big).await.unwrap().size, 12 << 20);

    let again = store
        .put_opts(
            &at("a/1.txt"),
            PutPayload::from_static(b"x"),
            PutMode::Create.into(),
        )
        .await;
    assert_eq!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        honours_conditional_writes,
        "conditional create on an existing object: {again:?}"
    );
    assert_eq!(
        recon::lock::probe(loc).await.unwrap(),
        honours_conditional_writes
    );

    for rel in ["a/1.txt", "a/2.txt", "b/3.txt", "big.bin"] {
        store.delete(&at(rel)).await.unwrap();
    }
    assert!(matches!(
        store.head(&at("a/2.txt")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    let left: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&loc.prefix)))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn local_files_conform() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    conformance(&recon::store::open(&url).unwrap(), true).await;
}

#[tokio::test]
async fn memory_conforms() {
    conformance(&recon::store::open("memory://conformance/x").unwrap(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_conforms() {
    let Some(server) = S3Server::moto() else {
        return;
    };
    conformance(&server.location("conformance"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_conforms_but_ignores_conditional_writes() {
    let Some(server) = S3Server::garage() else {
        return;
    };
    conformance(&server.location("conformance"), false).await;
}
