//! Bad input, table-driven: command lines, job files and snapshots that are wrong in one
//! way each. Every case must stop with its documented exit code (never 70, never a
//! panic), with a message naming the culprit (the argument, file, line, entity or
//! column), and without a committed or half-written run.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};

use crate::common::*;

/// What a case does to a fresh copy of the sample (lake, job), and the arguments it
/// then runs `recon` with.
type Prepare = Arc<dyn Fn(&Fixture) -> Vec<String> + Send + Sync>;

struct Case {
    name: String,
    prepare: Prepare,
    code: i32,
    /// Each must appear in stderr.
    needles: Vec<String>,
}

fn case(name: impl Into<String>, code: i32, needles: &[&str], prepare: Prepare) -> Case {
    Case {
        name: name.into(),
        prepare,
        code,
        needles: needles.iter().map(|s| s.to_string()).collect(),
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `recon run` of the sample job with `extra` arguments.
fn run_args(extra: &[&str]) -> Vec<String> {
    let mut a = strings(&RUN_SAMPLE);
    a.extend(strings(&["--run-id", "bad-input"]));
    a.extend(strings(extra));
    a
}

/// A case that runs the sample job with the job text edited by `edit`.
fn job_case(
    name: &str,
    code: i32,
    needles: &[&str],
    edit: impl Fn(String) -> String + Send + Sync + 'static,
) -> Case {
    case(
        format!("job: {name}"),
        code,
        needles,
        Arc::new(move |fx| {
            fx.edit_job(&edit);
            run_args(&[])
        }),
    )
}

/// A job case adding `line` right after the first entity's key (`tenants`).
fn tenants_case(name: &str, code: i32, needles: &[&str], line: &'static str) -> Case {
    job_case(name, code, needles, move |j| {
        j.replacen(
            "key = [\"tenant_id\"]\n",
            &format!("key = [\"tenant_id\"]\n{line}\n"),
            1,
        )
    })
}

/// A job case setting a rule line (`fields.x = …` or `rename = …`) in the `users`
/// entity: it replaces the line of the same key there, or is added after the key.
fn users_case(name: &str, code: i32, needles: &[&str], line: &'static str) -> Case {
    job_case(name, code, needles, move |j| {
        let key = line.split(" = ").next().unwrap();
        let at = j.find("name = \"users\"").unwrap();
        let (head, tail) = j.split_at(at);
        let existing = tail
            .lines()
            .take_while(|l| !l.starts_with("[[entities]]"))
            .find(|l| l.starts_with(&format!("{key} = ")))
            .map(str::to_string);
        match existing {
            Some(old) => format!("{head}{}", tail.replacen(&old, line, 1)),
            None => j.replacen(
                "key = [\"tenant_id\", \"user_id\"]\n",
                &format!("key = [\"tenant_id\", \"user_id\"]\n{line}\n"),
                1,
            ),
        }
    })
}

/// A case that runs the sample job after `damage` changed the lake.
fn lake_case(
    name: &str,
    code: i32,
    needles: &[&str],
    damage: impl Fn(&Fixture) + Send + Sync + 'static,
) -> Case {
    case(
        format!("lake: {name}"),
        code,
        needles,
        Arc::new(move |fx| {
            damage(fx);
            run_args(&[])
        }),
    )
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Replaces the tenants snapshot of `system` with one file holding `batch`.
fn tenants_snapshot(fx: &Fixture, system: &str, batch: &RecordBatch) {
    let dir = fx.snapshot(system, "tenants");
    std::fs::remove_dir_all(&dir).unwrap();
    write_parquet(&dir.join("part-00000.parquet"), batch);
}

fn tenants_with(column: Field, values: ArrayRef) -> RecordBatch {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..values.len() as i64));
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("tenant_id", DataType::Int64, false),
            column,
        ])),
        vec![ids, values],
    )
    .unwrap()
}

fn cases() -> Vec<Case> {
    let mut c = Vec::new();

    // ---- Command lines --------------------------------------------------------------
    for date in [
        "24-06-01",
        "2024-6-1",
        "2024-13-01",
        "2024-02-30",
        "2024/06/01",
        "",
        "yesterday",
        "20240601",
        "2024-06-01T00:00",
        " 2024-06-01",
        "2024-06-01 ",
        "+2024-06-01",
    ] {
        c.push(case(
            format!("cli: run date {date:?}"),
            2,
            &["is not a date in YYYY-MM-DD form"],
            Arc::new(move |_| {
                strings(&[
                    "run",
                    "--job",
                    "job.toml",
                    "--run-date",
                    date,
                    "--run-id",
                    "x",
                ])
            }),
        ));
    }
    for id in ["a b", "x/y", "", "ü", "../up", &"a".repeat(65)] {
        let id = id.to_string();
        c.push(case(
            format!("cli: run id {id:?}"),
            2,
            &["run id", "must be 1 to 64 letters"],
            Arc::new(move |_| {
                strings(&[
                    "run",
                    "--job",
                    "job.toml",
                    "--run-date",
                    "2024-06-01",
                    "--run-id",
                    &id,
                ])
            }),
        ));
    }
    for share in ["2", "-0.1", "NaN", "abc", "inf"] {
        c.push(case(
            format!("cli: --max-correction-share {share}"),
            2,
            &["max-correction-share"],
            Arc::new(move |_| run_args(&[&format!("--max-correction-share={share}")])),
        ));
    }
    for limit in ["lots", "-5", "12XB"] {
        c.push(case(
            format!("cli: --memory-limit {limit}"),
            2,
            &["--memory-limit"],
            Arc::new(move |_| {
                let mut a = strings(&[&format!("--memory-limit={limit}")]);
                a.extend(run_args(&[]));
                a
            }),
        ));
    }
    for ttl in ["abc", "-1"] {
        c.push(case(
            format!("cli: --lock-ttl-secs {ttl}"),
            2,
            &["--lock-ttl-secs"],
            Arc::new(move |_| run_args(&[&format!("--lock-ttl-secs={ttl}")])),
        ));
    }
    c.push(case(
        "cli: unknown entity",
        2,
        &["entity `nope`"],
        Arc::new(|_| run_args(&["--entity", "nope"])),
    ));
    c.push(case(
        "cli: no --job",
        2,
        &["--job"],
        Arc::new(|_| strings(&["run", "--run-date", "2024-06-01"])),
    ));
    c.push(case(
        "cli: no --run-date",
        2,
        &["--run-date"],
        Arc::new(|_| strings(&["run", "--job", "job.toml"])),
    ));
    c.push(case(
        "cli: job file missing",
        2,
        &["cannot read job file", "nope.toml"],
        Arc::new(|_| strings(&["run", "--job", "nope.toml", "--run-date", "2024-06-01"])),
    ));
    c.push(case(
        "cli: job file is a folder",
        2,
        &["cannot read job file", "lake"],
        Arc::new(|_| strings(&["run", "--job", "lake", "--run-date", "2024-06-01"])),
    ));
    c.push(case(
        "cli: job file is /dev/zero",
        2,
        &["/dev/zero", "larger than 16 MiB"],
        Arc::new(|_| strings(&["validate", "--job", "/dev/zero"])),
    ));
    c.push(case(
        "cli: unknown subcommand",
        2,
        &["unrecognized subcommand 'reconcile'"],
        Arc::new(|_| strings(&["reconcile"])),
    ));
    c.push(case(
        "cli: unknown option",
        2,
        &["--dry"],
        Arc::new(|_| run_args(&["--dry"])),
    ));
    c.push(case(
        "cli: --format xml",
        2,
        &["--format", "xml"],
        Arc::new(|_| run_args(&["--format", "xml"])),
    ));
    c.push(case(
        "cli: --log-level loud",
        2,
        &["--log-level", "loud"],
        Arc::new(|_| {
            let mut a = strings(&["--log-level", "loud"]);
            a.extend(run_args(&[]));
            a
        }),
    ));
    for scale in ["0", "-5", "1000000000000"] {
        c.push(case(
            format!("cli: generate --scale {scale}"),
            2,
            &["--scale"],
            Arc::new(move |_| strings(&["generate", "--out", "gen", &format!("--scale={scale}")])),
        ));
    }
    c.push(case(
        "cli: generate --bench-rows 0",
        2,
        &["--bench-rows must be from 1"],
        Arc::new(|_| strings(&["generate", "--out", "gen", "--bench-rows", "0"])),
    ));
    c.push(case(
        "cli: diff without --key",
        2,
        &["--key"],
        Arc::new(|_| strings(&["diff", "--left", "a.parquet", "--right", "b.parquet"])),
    ));
    c.push(case(
        "cli: diff of missing files",
        4,
        &["no Parquet files", ".parquet"],
        Arc::new(|_| {
            strings(&[
                "diff",
                "--left",
                "a.parquet",
                "--right",
                "b.parquet",
                "--key",
                "id",
            ])
        }),
    ));
    c.push(case(
        "cli: diff --key-plan bogus",
        2,
        &["--key-plan"],
        Arc::new(|_| {
            strings(&[
                "diff",
                "--left",
                "a.parquet",
                "--right",
                "b.parquet",
                "--key",
                "id",
                "--key-plan",
                "bogus",
            ])
        }),
    ));
    c.push(case(
        "cli: apply to a system not in the job",
        2,
        &["system `crm` is not in job"],
        Arc::new(|_| {
            strings(&[
                "apply",
                "--job",
                "job.toml",
                "--run-date",
                "2024-06-01",
                "--system",
                "crm",
            ])
        }),
    ));
    c.push(case(
        "cli: apply to a system without an exporter",
        2,
        &["system `service` has no [exporters.service] table"],
        Arc::new(|_| {
            strings(&[
                "apply",
                "--job",
                "job.toml",
                "--run-date",
                "2024-06-01",
                "--system",
                "service",
            ])
        }),
    ));
    c.push(case(
        "cli: validate with a bad date",
        2,
        &["is not a date"],
        Arc::new(|_| strings(&["validate", "--job", "job.toml", "--run-date", "06/01/2024"])),
    ));
    c.push(case(
        "cli: export of a job without exporters",
        2,
        &["declares no exporters"],
        Arc::new(|_| strings(&["export", "--job", "job.toml", "--run-date", "2024-06-01"])),
    ));
    c.push(case(
        "cli: run id already committed",
        2,
        &["run `twice` of 2024-06-01 is already committed"],
        Arc::new(|fx| {
            let first = Command::new(env!("CARGO_BIN_EXE_recon"))
                .current_dir(fx.path())
                .args(RUN_SAMPLE)
                .args(["--run-id", "twice", "--quiet"])
                .output()
                .unwrap();
            assert!(first.status.success(), "{}", describe(&first));
            let mut a = strings(&RUN_SAMPLE);
            a.extend(strings(&["--run-id", "twice"]));
            a
        }),
    ));

    // ---- Job files: syntax and shape ------------------------------------------------
    c.push(job_case("unclosed table", 2, &["job.toml:8"], |j| {
        j.replace("[systems]", "[systems")
    }));
    c.push(job_case("unterminated string", 2, &["job.toml:4"], |j| {
        j.replace("name = \"identity\"", "name = \"identity")
    }));
    c.push(job_case(
        "duplicate key",
        2,
        &["job.toml:5", "duplicate key"],
        |j| {
            j.replace(
                "name = \"identity\"\n",
                "name = \"identity\"\nname = \"again\"\n",
            )
        },
    ));
    c.push(job_case("empty file", 2, &["job.toml"], |_| String::new()));
    c.push(job_case("not TOML at all", 2, &["job.toml:1"], |_| {
        "<job/>".into()
    }));
    c.push(job_case(
        "unknown [job] key",
        2,
        &["job.toml", "nmae"],
        |j| j.replace("name = \"identity\"", "nmae = \"identity\""),
    ));
    c.push(job_case(
        "extra [job] key",
        2,
        &["job.toml:5", "colour"],
        |j| {
            j.replace(
                "name = \"identity\"\n",
                "name = \"identity\"\ncolour = \"red\"\n",
            )
        },
    ));
    c.push(job_case(
        "unknown [systems] key",
        2,
        &["job.toml", "replika"],
        |j| j.replace("replica = \"service\"", "replika = \"service\""),
    ));
    c.push(job_case(
        "unknown table",
        2,
        &["job.toml", "guardrail"],
        |j| j.replace("[guardrails]", "[guardrail]"),
    ));
    c.push(job_case(
        "unknown guardrail key",
        2,
        &["job.toml:14", "max_share"],
        |j| j.replace("max_correction_share = 0.5", "max_share = 0.5"),
    ));
    c.push(job_case("share as text", 2, &["job.toml:14"], |j| {
        j.replace(
            "max_correction_share = 0.5",
            "max_correction_share = \"half\"",
        )
    }));
    c.push(job_case(
        "share above 1",
        2,
        &["max_correction_share must be between 0 and 1, got 1.5"],
        |j| j.replace("max_correction_share = 0.5", "max_correction_share = 1.5"),
    ));
    c.push(job_case(
        "share below 0",
        2,
        &["max_correction_share must be between 0 and 1"],
        |j| j.replace("max_correction_share = 0.5", "max_correction_share = -0.5"),
    ));
    c.push(job_case(
        "row drop above 1",
        2,
        &["max_row_drop must be between 0 and 1"],
        |j| {
            j.replace(
                "max_correction_share = 0.5",
                "max_correction_share = 0.5\nmax_row_drop = 3",
            )
        },
    ));
    c.push(job_case("same system twice", 2, &["job.toml"], |j| {
        j.replace("replica = \"service\"", "replica = \"monolith\"")
    }));
    c.push(job_case("no systems", 2, &["job.toml", "systems"], |j| {
        j.replace(
            "[systems]\nsource = \"monolith\"\nreplica = \"service\"\n",
            "",
        )
    }));
    c.push(job_case(
        "job name with a slash",
        2,
        &["job.toml:4", "a/b"],
        |j| j.replace("name = \"identity\"", "name = \"a/b\""),
    ));
    c.push(job_case("empty job name", 2, &["job.toml:4"], |j| {
        j.replace("name = \"identity\"", "name = \"\"")
    }));
    c.push(job_case(
        "entity name with a space",
        2,
        &["job.toml:16", "ten ants"],
        |j| j.replace("name = \"tenants\"", "name = \"ten ants\""),
    ));
    c.push(job_case(
        "entity declared twice",
        2,
        &["entity `groups` is declared twice"],
        |j| j.replace("name = \"memberships\"", "name = \"groups\""),
    ));
    c.push(job_case("no entities", 2, &["job.toml"], |j| {
        j[..j.find("[[entities]]").unwrap()].to_string()
    }));
    c.push(job_case("entity without a key", 2, &["job.toml:16"], |j| {
        j.replacen("key = [\"tenant_id\"]\n", "", 1)
    }));
    c.push(job_case("empty key", 2, &["job.toml", "key"], |j| {
        j.replacen("key = [\"tenant_id\"]\n", "key = []\n", 1)
    }));
    c.push(job_case("key as a string", 2, &["job.toml:18"], |j| {
        j.replacen("key = [\"tenant_id\"]\n", "key = \"tenant_id\"\n", 1)
    }));
    c.push(job_case(
        "key column twice",
        2,
        &["job.toml", "tenant_id"],
        |j| {
            j.replacen(
                "key = [\"tenant_id\"]\n",
                "key = [\"tenant_id\", \"tenant_id\"]\n",
                1,
            )
        },
    ));
    c.push(job_case(
        "unknown entity key",
        2,
        &["job.toml:19", "colour"],
        |j| {
            j.replacen(
                "key = [\"tenant_id\"]\n",
                "key = [\"tenant_id\"]\ncolour = 1\n",
                1,
            )
        },
    ));
    c.push(job_case(
        "depends_on an unknown entity",
        2,
        &["depends_on names unknown entity `tenant`"],
        |j| j.replacen("depends_on = [\"tenants\"]", "depends_on = [\"tenant\"]", 1),
    ));
    c.push(job_case(
        "depends_on cycle",
        2,
        &["depends_on forms a cycle"],
        |j| {
            j.replacen(
                "key = [\"tenant_id\"]\n",
                "key = [\"tenant_id\"]\ndepends_on = [\"memberships\"]\n",
                1,
            )
        },
    ));
    c.push(job_case(
        "depends_on itself",
        2,
        &["entity `tenants`", "cycle"],
        |j| {
            j.replacen(
                "key = [\"tenant_id\"]\n",
                "key = [\"tenant_id\"]\ndepends_on = [\"tenants\"]\n",
                1,
            )
        },
    ));
    c.push(job_case(
        "non-UTF-8 bytes",
        2,
        &["job.toml:5", "not UTF-8", "byte offset"],
        |j| {
            let at = j.find("lake").unwrap();
            // Invalid UTF-8 cannot live in a String: the marker is swapped for a byte below.
            format!("{}\u{0}INVALID\u{0}{}", &j[..at], &j[at..])
        },
    ));

    // ---- Job files: field rules ------------------------------------------------------
    c.push(users_case(
        "unknown compare",
        2,
        &["unknown compare \"fuzzy\""],
        "fields.bio2 = { compare = \"fuzzy\" }",
    ));
    c.push(users_case(
        "unknown precision",
        2,
        &["unknown precision \"minutes\""],
        "fields.created_at = { precision = \"minutes\" }",
    ));
    c.push(users_case(
        "negative abs_tol",
        2,
        &["abs_tol must be a number from 0 to 1e38"],
        "fields.score = { abs_tol = -1 }",
    ));
    c.push(users_case(
        "huge rel_tol",
        2,
        &["rel_tol must be a number from 0 to 1e38"],
        "fields.score = { rel_tol = 1e40 }",
    ));
    c.push(users_case(
        "nan abs_tol",
        2,
        &["abs_tol must be a number"],
        "fields.score = { abs_tol = nan }",
    ));
    c.push(users_case(
        "tiny abs_tol",
        2,
        &["at most 30 decimal places"],
        "fields.score = { abs_tol = 1e-40 }",
    ));
    c.push(users_case(
        "unknown owner",
        2,
        &["owner"],
        "fields.bio = { owner = \"nobody\" }",
    ));
    c.push(users_case(
        "newest without by",
        2,
        &["by"],
        "fields.bio = { owner = \"newest\" }",
    ));
    c.push(users_case(
        "by without newest",
        2,
        &["by"],
        "fields.bio = { by = \"updated_at\" }",
    ));
    c.push(users_case(
        "ignored field with an owner",
        2,
        &["an ignored field takes no owner or compare rules"],
        "fields.bio = { ignore = true, owner = \"replica\" }",
    ));
    c.push(users_case(
        "unknown field rule key",
        2,
        &["job.toml", "tolerance"],
        "fields.bio = { tolerance = 1 }",
    ));
    c.push(users_case(
        "field rule for an unknown column",
        2,
        &["entity `users`", "biography"],
        "fields.biography = { compare = \"trim\" }",
    ));
    c.push(users_case(
        "rule on a key column",
        2,
        &["entity `users`", "user_id"],
        "fields.user_id = { compare = \"trim\" }",
    ));
    c.push(users_case(
        "tolerance on a text column",
        2,
        &["entity `users`", "field `bio`"],
        "fields.bio = { abs_tol = 1 }",
    ));
    c.push(users_case(
        "precision on a number",
        2,
        &["entity `users`", "field `score`"],
        "fields.score = { precision = \"ms\" }",
    ));
    c.push(users_case(
        "case_insensitive on a number",
        2,
        &["entity `users`", "field `score`"],
        "fields.score = { compare = \"case_insensitive\" }",
    ));
    c.push(users_case(
        "by naming an unknown column",
        2,
        &["entity `users`", "updated_att"],
        "fields.nickname = { owner = \"newest\", by = \"updated_att\" }",
    ));
    c.push(users_case(
        "rename from an unknown column",
        2,
        &["entity `users`", "rename names column `mail`"],
        "rename = { mail = \"email_address\" }",
    ));

    // ---- Job files: columns the snapshots must have ---------------------------------
    c.push(tenants_case(
        "version not in the snapshots",
        2,
        &[
            "entity `tenants`",
            "version column `revision` is not in the source snapshot",
        ],
        "version = \"revision\"",
    ));
    c.push(tenants_case(
        "version is the key",
        2,
        &["version column `tenant_id` cannot be a key column"],
        "version = \"tenant_id\"",
    ));
    c.push(job_case(
        "key column not in the snapshots",
        2,
        &[
            "entity `tenants`",
            "key column `tenant` is not in the source snapshot",
        ],
        |j| j.replacen("key = [\"tenant_id\"]\n", "key = [\"tenant\"]\n", 1),
    ));
    c.push(job_case(
        "soft-delete column unknown",
        2,
        &["entity `users`", "deleted_on"],
        |j| j.replace("column = \"deleted_at\"", "column = \"deleted_on\""),
    ));
    c.push(job_case(
        "soft-delete column of the wrong type",
        2,
        &[
            "entity `users`",
            "soft-delete column `email` must be boolean, date or timestamp",
        ],
        |j| j.replace("column = \"deleted_at\"", "column = \"email\""),
    ));
    c.push(job_case(
        "deleted_value on a timestamp",
        2,
        &["deletes.deleted_value applies to a boolean column"],
        |j| {
            j.replace(
                "column = \"deleted_at\"",
                "column = \"deleted_at\", deleted_value = true",
            )
        },
    ));
    c.push(job_case(
        "unknown deletes policy",
        2,
        &["job.toml", "purge"],
        |j| j.replace("policy = \"report\"", "policy = \"purge\""),
    ));
    c.push(job_case(
        "soft deletes without a column",
        2,
        &["job.toml", "column"],
        |j| {
            j.replace(
                "deletes = { policy = \"report\" }",
                "deletes = { policy = \"soft\" }",
            )
        },
    ));
    c.push(job_case(
        "rename to a column the replica lacks",
        2,
        &[
            "entity `users`",
            "`email_adress`, which is not in the replica snapshot",
        ],
        |j| {
            j.replace(
                "rename = { email = \"email_address\" }",
                "rename = { email = \"email_adress\" }",
            )
        },
    ));
    c.push(job_case(
        "rename onto the key",
        2,
        &["job.toml", "user_id"],
        |j| {
            j.replace(
                "rename = { email = \"email_address\" }",
                "rename = { email = \"user_id\" }",
            )
        },
    ));

    // ---- Job files: exporters ----------------------------------------------------------
    c.push(job_case(
        "exporter of unknown kind",
        2,
        &["job.toml", "oracle"],
        |j| j + "\n[exporters.monolith]\nkind = \"oracle\"\n",
    ));
    c.push(job_case(
        "exporter for an unknown system",
        2,
        &["exporters.crm"],
        |j| j + "\n[exporters.crm]\nkind = \"postgres\"\nurl_env = \"X\"\n",
    ));
    c.push(job_case(
        "postgres exporter without url_env",
        2,
        &["exporters.monolith", "url_env"],
        |j| j + "\n[exporters.monolith]\nkind = \"postgres\"\n",
    ));
    c.push(case(
        "job: exporter's environment variable not set",
        2,
        &["RECON_TEST_UNSET_URL", "not set"],
        Arc::new(|fx| {
            fx.edit_job(|j| j + "\n[exporters.monolith]\nkind = \"postgres\"\nurl_env = \"RECON_TEST_UNSET_URL\"\n");
            strings(&["export", "--job", "job.toml", "--run-date", "2024-06-01", "--no-lock"])
        }),
    ));

    // ---- Stores ----------------------------------------------------------------------
    c.push(case(
        "store: S3 endpoint without credentials",
        2,
        &[
            "s3://recon/lake",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ],
        Arc::new(|fx| {
            fx.edit_job(|j| j.replace("lake = \"lake\"", "lake = \"s3://recon/lake\""));
            let mut a = strings(&["@env:AWS_ENDPOINT_URL=http://127.0.0.1:9"]);
            a.extend(run_args(&[]));
            a
        }),
    ));
    c.push(case(
        "store: S3 key without its secret",
        2,
        &["set AWS_SECRET_ACCESS_KEY"],
        Arc::new(|fx| {
            fx.edit_job(|j| j.replace("lake = \"lake\"", "lake = \"s3://recon/lake\""));
            let mut a = strings(&[
                "@env:AWS_ENDPOINT_URL=http://127.0.0.1:9",
                "@env:AWS_ACCESS_KEY_ID=minioadmin",
            ]);
            a.extend(run_args(&[]));
            a
        }),
    ));
    c.push(job_case(
        "lake URL without a bucket",
        2,
        &["s3:///lake", "needs a bucket"],
        |j| j.replace("lake = \"lake\"", "lake = \"s3:///lake\""),
    ));
    c.push(job_case(
        "lake URL of an unknown scheme",
        2,
        &["gs://b/lake", "unsupported scheme"],
        |j| j.replace("lake = \"lake\"", "lake = \"gs://b/lake\""),
    ));
    c.push(job_case(
        "relative file URL",
        2,
        &["file://lake", "absolute"],
        |j| j.replace("lake = \"lake\"", "lake = \"file://lake\""),
    ));

    // ---- Snapshots -------------------------------------------------------------------
    c.push(lake_case(
        "snapshot folder missing",
        4,
        &["entity `tenants`", "service", "no Parquet files"],
        |fx| {
            std::fs::remove_dir_all(fx.snapshot("service", "tenants")).unwrap();
        },
    ));
    c.push(lake_case(
        "snapshot folder empty",
        4,
        &["entity `groups`", "monolith", "no Parquet files"],
        |fx| {
            let d = fx.snapshot("monolith", "groups");
            std::fs::remove_dir_all(&d).unwrap();
            std::fs::create_dir_all(&d).unwrap();
        },
    ));
    c.push(lake_case(
        "text in a Parquet file",
        4,
        &[
            "entity `users`",
            "part-00000.parquet",
            "not readable Parquet",
        ],
        |fx| {
            std::fs::write(
                snapshot_part(&fx.snapshot("service", "users")),
                "id,name\n1,a\n",
            )
            .unwrap();
        },
    ));
    c.push(lake_case(
        "empty Parquet file",
        4,
        &["entity `users`", "part-00000.parquet"],
        |fx| {
            std::fs::write(snapshot_part(&fx.snapshot("monolith", "users")), "").unwrap();
        },
    ));
    c.push(lake_case(
        "truncated Parquet file",
        4,
        &["entity `memberships`", "part-00000.parquet"],
        |fx| {
            let p = snapshot_part(&fx.snapshot("service", "memberships"));
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        },
    ));
    c.push(lake_case(
        "footer cut off",
        4,
        &["entity `memberships`", "part-00000.parquet"],
        |fx| {
            let p = snapshot_part(&fx.snapshot("monolith", "memberships"));
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() - 4]).unwrap();
        },
    ));
    c.push(lake_case(
        "data pages damaged",
        4,
        &["entity `tenants`"],
        |fx| {
            let p = snapshot_part(&fx.snapshot("service", "tenants"));
            let mut b = std::fs::read(&p).unwrap();
            let third = b.len() / 3;
            for x in &mut b[4..third] {
                *x = 0xff;
            }
            std::fs::write(&p, &b).unwrap();
        },
    ));
    c.push(lake_case(
        "files of one snapshot disagree",
        4,
        &["entity `tenants`", "does not match"],
        |fx| {
            let batch = tenants_with(
                Field::new("other", DataType::Utf8, true),
                Arc::new(StringArray::from(vec!["x"])),
            );
            write_parquet(
                &fx.snapshot("service", "tenants").join("part-00001.parquet"),
                &batch,
            );
        },
    ));
    c.push(lake_case(
        "two columns of one name",
        4,
        &["entity `tenants`", "two columns named `name`"],
        |fx| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("tenant_id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
                Field::new("name", DataType::Utf8, true),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(vec![1])),
                    Arc::new(StringArray::from(vec!["a"])),
                    Arc::new(StringArray::from(vec!["b"])),
                ],
            )
            .unwrap();
            tenants_snapshot(fx, "service", &batch);
        },
    ));
    c.push(lake_case(
        "garbage snapshot manifest",
        4,
        &["_manifest.json", "not a snapshot manifest"],
        |fx| {
            std::fs::write(
                fx.snapshot("monolith", "groups").join("_manifest.json"),
                "{\"files\": 3",
            )
            .unwrap();
        },
    ));
    c.push(lake_case(
        "snapshot manifest of a newer format",
        4,
        &["_manifest.json", "newer than this recon reads"],
        |fx| {
            let m = serde_json::json!({
                "format_version": 99, "job": "identity", "system": "monolith", "entity": "groups",
                "run_date": "2024-06-01", "export_id": "x", "exporter": "files", "source": "x",
                "started_at": "2024-06-01T00:00:00Z", "finished_at": "2024-06-01T00:00:00Z",
                "rows": 1, "files": [], "schema": [], "watermark": {}
            });
            std::fs::write(
                fx.snapshot("monolith", "groups").join("_manifest.json"),
                m.to_string(),
            )
            .unwrap();
        },
    ));
    c.push(lake_case(
        "key column with a type the other side cannot match",
        4,
        &["entity `tenants`", "tenant_id"],
        |fx| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("tenant_id", DataType::Utf8, false),
                Field::new("name", DataType::Utf8, true),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(vec!["t1"])),
                    Arc::new(StringArray::from(vec!["a"])),
                ],
            )
            .unwrap();
            tenants_snapshot(fx, "service", &batch);
        },
    ));
    c.push(lake_case(
        "nested field",
        4,
        &["entity `tenants`", "`name`", "ignore = true"],
        |fx| {
            fx.edit_job(|j| j.replace("fields.created_at = { precision = \"ms\" }", ""));
            let inner = Fields::from(vec![Field::new("first", DataType::Utf8, true)]);
            let name = StructArray::new(
                inner.clone(),
                vec![Arc::new(StringArray::from(vec!["a"])) as ArrayRef],
                None,
            );
            let batch = tenants_with(
                Field::new("name", DataType::Struct(inner), true),
                Arc::new(name),
            );
            tenants_snapshot(fx, "service", &batch);
        },
    ));
    c.push(lake_case(
        "timestamp beyond the finer unit",
        4,
        &[
            "entity `tenants`",
            "`created_at` is in seconds in the source and in microseconds in the replica",
        ],
        |fx| {
            let seconds = arrow::array::TimestampSecondArray::from(vec![253_402_300_799i64])
                .with_timezone("UTC");
            let batch = tenants_with(
                Field::new(
                    "created_at",
                    DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
                    true,
                ),
                Arc::new(seconds),
            );
            tenants_snapshot(fx, "monolith", &batch);
            let micros =
                arrow::array::TimestampMicrosecondArray::from(vec![0i64]).with_timezone("UTC");
            let batch = tenants_with(
                Field::new(
                    "created_at",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
                Arc::new(micros),
            );
            tenants_snapshot(fx, "service", &batch);
            // The microsecond range ends in the year 294247: a second past it in seconds.
            let seconds = arrow::array::TimestampSecondArray::from(vec![9_300_000_000_000i64])
                .with_timezone("UTC");
            let batch = tenants_with(
                Field::new(
                    "created_at",
                    DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
                    true,
                ),
                Arc::new(seconds),
            );
            tenants_snapshot(fx, "monolith", &batch);
        },
    ));
    // A job or snapshot defect stops `recon validate --run-date` as it stops the run,
    // except a defect only reading the data shows (validate reads schemas and footers).
    let data_only = [
        "data pages damaged",
        "timestamp beyond the finer unit",
        "exporter's environment variable",
    ];
    let twins: Vec<Case> = c
        .iter()
        .filter(|k| {
            (k.name.starts_with("job: ") || k.name.starts_with("lake: "))
                && !data_only.iter().any(|d| k.name.contains(d))
        })
        .map(|k| {
            let prepare = Arc::clone(&k.prepare);
            Case {
                name: format!("{} (validate)", k.name),
                prepare: Arc::new(move |fx| {
                    prepare(fx);
                    strings(&["validate", "--job", "job.toml", "--run-date", "2024-06-01"])
                }),
                code: k.code,
                needles: k.needles.clone(),
            }
        })
        .collect();
    c.extend(twins);
    c
}

/// The job file with a byte that starts no UTF-8 character where `\0INVALID\0` stands.
fn fix_invalid_utf8(fx: &Fixture) {
    let text = std::fs::read(fx.job()).unwrap();
    let marker = b"\0INVALID\0";
    if let Some(at) = text.windows(marker.len()).position(|w| w == marker) {
        let mut bytes = text[..at].to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(&text[at + marker.len()..]);
        std::fs::write(fx.job(), bytes).unwrap();
    }
}

#[test]
fn every_bad_input_gets_its_exit_code_and_names_the_culprit() {
    let cases = cases();
    assert!(
        cases.len() >= 150 || std::env::var("RECON_BAD_INPUT_FEW").is_ok(),
        "{} cases",
        cases.len()
    );
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let fx = Fixture::new();
                    let args = (case.prepare)(&fx);
                    fix_invalid_utf8(&fx);
                    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
                    cmd.current_dir(fx.path())
                        .env_remove("RUST_LOG")
                        .env("RUST_BACKTRACE", "0");
                    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
                        cmd.env_remove(k);
                    }
                    // `@env:K=V` arguments set the environment instead.
                    let (env, args): (Vec<String>, Vec<String>) =
                        args.into_iter().partition(|a| a.starts_with("@env:"));
                    for e in env {
                        let (k, v) = e["@env:".len()..].split_once('=').unwrap();
                        cmd.env(k, v);
                    }
                    let out = cmd.args(&args).output().unwrap();
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let code = out.status.code();
                    let mut wrong = Vec::new();
                    if code != Some(case.code) {
                        wrong.push(format!("exit {code:?}, expected {}", case.code));
                    }
                    if stderr.contains("panicked") {
                        wrong.push("panicked".into());
                    }
                    for n in &case.needles {
                        if !stderr.contains(n.as_str()) {
                            wrong.push(format!("stderr lacks {n:?}"));
                        }
                    }
                    // Nothing committed by a run that failed.
                    if code != Some(0)
                        && code != Some(3)
                        && !manifests(&fx.out()).is_empty()
                        && !case.name.contains("already committed")
                    {
                        wrong.push("a failed run committed".into());
                    }
                    if !wrong.is_empty() {
                        failures.lock().unwrap().push(format!(
                            "{}: {}\n    args: {args:?}\n    stderr: {}",
                            case.name,
                            wrong.join("; "),
                            stderr.trim()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
