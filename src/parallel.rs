//! CPU-bound work on a stream of batches, spread over the machine's cores.

use std::sync::Arc;

use futures::{Stream, StreamExt};

use crate::error::{Error, Result};

/// How many batches to work on at once: one per core.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Applies `f` to each item of `items` on tokio's blocking pool, up to `at_once` items
/// at a time, and yields the results in the items' order. An error in `items` or from
/// `f` is yielded in its place; `what` names the work if a task panics.
pub fn map_blocking<S, T, U, F>(
    items: S,
    at_once: usize,
    what: &'static str,
    f: F,
) -> impl Stream<Item = Result<U>>
where
    S: Stream<Item = Result<T>>,
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(T) -> Result<U> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    items
        .map(move |item| {
            let f = Arc::clone(&f);
            async move {
                let item = item?;
                tokio::task::spawn_blocking(move || f(item))
                    .await
                    .map_err(|e| Error::bug(what, e))?
            }
        })
        .buffered(at_once.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_in_order_and_errors_in_place() {
        let items = futures::stream::iter((0..50u64).map(|i| {
            if i == 40 {
                Err(Error::Internal("item 40".into()))
            } else {
                Ok(i)
            }
        }));
        let out: Vec<Result<u64>> = map_blocking(items, 4, "squaring", |i| {
            // Later items finish first.
            std::thread::sleep(std::time::Duration::from_micros(50 * (50 - i)));
            Ok(i * i)
        })
        .collect()
        .await;
        assert_eq!(out.len(), 50);
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, (i * i) as u64),
                Err(e) => {
                    assert_eq!(i, 40);
                    assert!(e.to_string().contains("item 40"), "{e}");
                }
            }
        }
    }
}
