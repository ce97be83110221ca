//! One contender for the run-date lock, for the lock race tests (`tests/it/lock.rs`):
//! `lock_contender OUTPUT_URL ID START_MS` waits until START_MS (milliseconds since the
//! epoch, so that all contenders go at once), takes the lock of the sample run date under OUTPUT_URL,
//! marks its tenure with an exclusive create of `locks/_tenure`, holds it a few
//! milliseconds, removes the mark and releases the lock. Exit 0: it held the lock; 6:
//! another holder had it; 1: the mark already existed, so two tenures overlapped.

use std::time::Duration;

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(id), Some(start)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: lock_contender OUTPUT_URL ID START_MS");
        std::process::exit(2);
    };
    let start: i64 = start.parse().expect("START_MS");
    let wait = start - chrono::Utc::now().timestamp_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let output = recon::store::open(&url).expect("output URL");
    let date = recon::generate::sample_run_date();
    let lock =
        match recon::lock::RunLock::acquire(&output, "job", date, &id, Duration::from_secs(600))
            .await
        {
            Ok(lock) => lock,
            Err(e) => {
                eprintln!("{id}: {e}");
                std::process::exit(e.exit_code() as i32);
            }
        };
    let mark = output.child("locks/_tenure").prefix;
    let create = PutOptions::from(PutMode::Create);
    if let Err(e) = output
        .store
        .put_opts(&mark, PutPayload::from(id.clone().into_bytes()), create)
        .await
    {
        eprintln!("{id}: holds the lock while another does: {e}");
        std::process::exit(1);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    output.store.delete(&mark).await.expect("removing the mark");
    lock.release().await;
}
