//! Tests of the key merge: the pairs in key order whatever the batches, a key out of
//! order or repeated stopping it, a query reading the merged pairs without a sort, and
//! the memory it holds.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use super::{MergePairsExec, MergedPairs, NotMergeable};

/// A side of (k0 Int64, k1 Utf8, __h UInt64 with NULL for not live, v0 Utf8), in
/// batches of `per_batch` rows.
fn side(rows: &[(i64, &str, Option<u64>, &str)], prefix: &str, per_batch: usize) -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k0", DataType::Int64, false),
        Field::new("k1", DataType::Utf8, false),
        Field::new("__h", DataType::UInt64, true),
        Field::new(format!("{prefix}0"), DataType::Utf8, true),
    ]));
    let batches = rows
        .chunks(per_batch)
        .map(|c| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.1))),
                    Arc::new(c.iter().map(|r| r.2).collect::<UInt64Array>()),
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.3))),
                ],
            )
            .unwrap()
        })
        .collect();
    MemTable::try_new(schema, vec![batches]).unwrap()
}

/// The merge of the tables `s` and `r` of `ctx`, each read whole.
async fn merge_of(ctx: &SessionContext) -> MergePairsExec {
    let mut sides = Vec::new();
    for table in ["s", "r"] {
        let df = ctx.sql(&format!("SELECT * FROM {table}")).await.unwrap();
        sides.push(df.create_physical_plan().await.unwrap());
    }
    let replica = sides.pop().unwrap();
    MergePairsExec::try_new(sides.pop().unwrap(), replica, 2).unwrap()
}

/// The merge's pairs as (k0, k1, __sr, __sl, __rr, __rl, __x, sv0, v0) rows.
async fn merge(
    source: MemTable,
    replica: MemTable,
) -> Result<
    Vec<(
        i64,
        String,
        i64,
        i64,
        i64,
        i64,
        Option<u64>,
        Option<String>,
        Option<String>,
    )>,
> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    ctx.register_table("s", Arc::new(source)).unwrap();
    ctx.register_table("r", Arc::new(replica)).unwrap();
    let exec = Arc::new(merge_of(&ctx).await);
    let batches = datafusion::physical_plan::collect(exec, ctx.task_ctx()).await?;
    let mut out = Vec::new();
    for b in &batches {
        let i64s = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let text = |i: usize| {
            let a = arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            a.as_string::<i32>().clone()
        };
        let (k0, k1, sr, sl, rr, rl) = (i64s(0), text(1), i64s(2), i64s(3), i64s(4), i64s(5));
        let x = b.column(6).as_primitive::<arrow::datatypes::UInt64Type>();
        let (sv, rv) = (text(7), text(8));
        for row in 0..b.num_rows() {
            out.push((
                k0.value(row),
                k1.value(row).to_string(),
                sr.value(row),
                sl.value(row),
                rr.value(row),
                rl.value(row),
                x.is_valid(row).then(|| x.value(row)),
                sv.is_valid(row).then(|| sv.value(row).to_string()),
                rv.is_valid(row).then(|| rv.value(row).to_string()),
            ));
        }
    }
    Ok(out)
}

#[tokio::test]
async fn pairs_are_the_rows_that_differ_in_key_order() {
    let s = [
        (1, "a", Some(1), "s1a"),
        (1, "b", Some(2), "s1b"),
        (2, "a", Some(3), "s2a"),
        (3, "a", None, "s3a"),
        (5, "a", Some(5), "s5a"),
    ];
    let r = [
        (0, "z", Some(9), "r0z"),
        (1, "b", Some(2), "r1b"),
        (2, "a", Some(4), "r2a"),
        (3, "a", Some(6), "r3a"),
        (4, "a", Some(7), "r4a"),
    ];
    let some = |v: &str| Some(v.to_string());
    let expected = vec![
        (0, "z".to_string(), 0, 0, 1, 1, Some(9), None, some("r0z")),
        (1, "a".to_string(), 1, 1, 0, 0, Some(1), some("s1a"), None),
        (
            2,
            "a".to_string(),
            1,
            1,
            1,
            1,
            Some(3 ^ 4),
            some("s2a"),
            some("r2a"),
        ),
        (
            3,
            "a".to_string(),
            1,
            0,
            1,
            1,
            Some(6),
            some("s3a"),
            some("r3a"),
        ),
        (4, "a".to_string(), 0, 0, 1, 1, Some(7), None, some("r4a")),
        (5, "a".to_string(), 1, 1, 0, 0, Some(5), some("s5a"), None),
    ];
    // Whatever the batches, the same pairs.
    for (bs, br) in [(1, 1), (2, 3), (5, 5)] {
        let got = merge(side(&s, "sv", bs), side(&r, "v", br)).await.unwrap();
        assert_eq!(got, expected, "batches of {bs} and {br}");
    }
    // An empty side: every row of the other is a pair.
    let got = merge(side(&s, "sv", 2), side(&[], "v", 1)).await.unwrap();
    assert_eq!(got.len(), s.len());
}

#[tokio::test]
async fn keys_out_of_order_or_repeated_stop_the_merge() {
    let sorted = [(1, "a", Some(1), "x"), (2, "a", Some(1), "x")];
    for (rows, repeated) in [
        (vec![(1, "a", Some(1), "x"), (1, "a", Some(1), "x")], true),
        (vec![(1, "b", Some(1), "x"), (1, "a", Some(1), "x")], false),
        (vec![(2, "a", Some(1), "x"), (1, "a", Some(1), "x")], false),
    ] {
        // Within a batch and across two.
        for per_batch in [2, 1] {
            let e = merge(side(&sorted, "sv", 2), side(&rows, "v", per_batch))
                .await
                .unwrap_err();
            let why = NotMergeable::find(&e).expect("not mergeable");
            assert_eq!(why.side, "replica");
            assert_eq!(why.repeated, repeated, "{rows:?}");
        }
    }
}

#[tokio::test]
async fn a_query_over_the_merged_pairs_reads_them_in_key_order_without_a_sort() {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let source: Vec<_> = (0..5000).map(|k| (k * 2, "a", Some(1), "x")).collect();
    // Every row differs: each key on both sides is a pair.
    let replica: Vec<_> = (0..5000).map(|k| (k * 3, "a", Some(2), "y")).collect();
    ctx.register_table("s", Arc::new(side(&source, "sv", 700)))
        .unwrap();
    ctx.register_table("r", Arc::new(side(&replica, "v", 900)))
        .unwrap();
    let merge = merge_of(&ctx).await;
    ctx.register_table("pairs", Arc::new(MergedPairs::new(Arc::new(merge))))
        .unwrap();
    let df = ctx
        .sql(
            "SELECT k0, \"__sr\" + \"__rr\" AS sides FROM pairs WHERE \"__sr\" = 1 ORDER BY k0, k1",
        )
        .await
        .unwrap();
    let physical = df.clone().create_physical_plan().await.unwrap();
    let shown = datafusion::physical_plan::displayable(physical.as_ref())
        .indent(false)
        .to_string();
    assert!(!shown.contains("SortExec"), "{shown}");
    assert!(shown.contains("MergePairsExec"), "{shown}");
    let batches = df.collect().await.unwrap();
    let keys: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    // Every source key, in order; the multiples of 6 are on both sides.
    let expected: Vec<i64> = (0..5000).map(|k| k * 2).collect();
    assert_eq!(keys, expected);
    let both: i64 = batches
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .filter(|v| **v == 2)
                .count() as i64
        })
        .sum();
    assert_eq!(both, (0..10000).filter(|k| k % 6 == 0).count() as i64);
}

#[tokio::test]
async fn the_merge_holds_only_the_pairs_not_yet_emitted() {
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    // Two sides with no key in common: every row is a pair, about 4 MB of them,
    // four times the pool.
    let source: Vec<_> = (0..50_000).map(|k| (k, "a", Some(1), "x")).collect();
    let replica: Vec<_> = (50_000..100_000).map(|k| (k, "a", Some(1), "x")).collect();
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(1 << 20)))
        .build_arc()
        .unwrap();
    let ctx =
        SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(1), runtime);
    ctx.register_table("s", Arc::new(side(&source, "sv", 4096)))
        .unwrap();
    ctx.register_table("r", Arc::new(side(&replica, "v", 4096)))
        .unwrap();
    let merge = Arc::new(merge_of(&ctx).await);
    let mut stream = merge.execute(0, ctx.task_ctx()).unwrap();
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        rows += batch.unwrap().num_rows();
    }
    assert_eq!(rows, 100_000);
}
