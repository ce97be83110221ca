//! The command line's configuration: every argument is checked before anything touches
//! a store, `--lake` takes the outputs with it, and each subcommand's help says what it
//! prints.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

fn recon(fx: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(fx.path())
        .env_remove("RUST_LOG")
        .args(["--log-level", "error"])
        .args(args)
        .output()
        .unwrap()
}

/// The sample job with a database exporter for the source, so that `export` and
/// `apply` get as far as their arguments (no database is ever reached).
fn fixture_with_exporter() -> Fixture {
    let fx = Fixture::new();
    fx.edit_job(|t| {
        t.replacen(
            "[[entities]]",
            "[exporters.monolith]\nkind = \"postgres\"\nurl_env = \"RECON_TEST_UNSET_URL\"\n\n[[entities]]",
            1,
        )
    });
    fx
}

/// Every file below `dir`, or none when it does not exist.
fn files_or_none(dir: &Path) -> Vec<std::path::PathBuf> {
    if dir.exists() {
        files_below(dir)
    } else {
        Vec::new()
    }
}

/// Regression: a bad `--entity` used to be found only after the lock probe and the lock
/// had been written to the output prefix (and after the export stage had run).
#[test]
fn a_bad_argument_exits_2_before_anything_is_written() {
    let d = "2024-06-01";
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "run",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--entity",
                "nope",
            ],
            "entity `nope` is not in job",
        ),
        (
            &[
                "run",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--lake",
                "lake",
                "--entity",
                "nope",
            ],
            "entity `nope` is not in job",
        ),
        (
            &[
                "run",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--run-id",
                "a/b",
            ],
            "run id `a/b`",
        ),
        (
            &[
                "run",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--max-correction-share",
                "2",
            ],
            "--max-correction-share must be between 0 and 1",
        ),
        (
            &[
                "diff", "--left", "lake", "--right", "lake", "--key", "id", "--output", "out",
                "--run-id", "a b",
            ],
            "run id `a b`",
        ),
        (
            &[
                "diff",
                "--left",
                "lake",
                "--right",
                "lake",
                "--key",
                "id",
                "--output",
                "out",
                "--max-correction-share=-1",
            ],
            "--max-correction-share must be between 0 and 1",
        ),
        (
            &[
                "export",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--entity",
                "nope",
            ],
            "entity `nope` is not in job",
        ),
        (
            &[
                "export",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--system",
                "crm",
            ],
            "system `crm` is not in job",
        ),
        (
            &[
                "export",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--system",
                "service",
            ],
            "system `service` has no exporter",
        ),
        (
            &[
                "apply",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--system",
                "crm",
            ],
            "system `crm` is not in job",
        ),
        (
            &[
                "apply",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--system",
                "monolith",
                "--entity",
                "nope",
            ],
            "entity `nope` is not in job",
        ),
        (
            &[
                "apply",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--system",
                "monolith",
                "--run",
                "../x",
            ],
            "run id `../x`",
        ),
        (
            &[
                "apply",
                "--job",
                "job.toml",
                "--run-date",
                d,
                "--system",
                "service",
            ],
            "system `service` has no [exporters.service] table",
        ),
    ];
    for (args, needle) in cases {
        let fx = fixture_with_exporter();
        let lake_before = files_below(&fx.path().join("lake"));
        let out = recon(&fx, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {err}"
        );
        assert!(
            !fx.out().exists(),
            "{args:?} wrote to the output prefix: {:?}",
            files_or_none(&fx.out())
        );
        assert_eq!(
            files_below(&fx.path().join("lake")),
            lake_before,
            "{args:?} wrote to the lake"
        );
    }
}

/// Regression: `--lake` without `--output` read the given lake but still wrote the
/// outputs (and took the lock) under the job file's output prefix.
#[test]
fn lake_without_output_writes_under_that_lake() {
    let fx = Fixture::new();
    copy_dir(&fx.path().join("lake"), &fx.path().join("elsewhere"));
    let out = recon(
        &fx,
        &[
            "--quiet",
            "run",
            "--job",
            "job.toml",
            "--run-date",
            "2024-06-01",
        ]
        .into_iter()
        .chain(["--run-id", "moved", "--lake", "elsewhere"])
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let moved = fx.path().join("elsewhere/recon/identity");
    let committed = manifests(&moved);
    assert_eq!(
        committed.len(),
        1,
        "no run committed under {}",
        moved.display()
    );
    assert_eq!(committed[0].run_id, "moved");
    assert!(
        !fx.out().exists(),
        "the job file's output prefix was written: {:?}",
        files_or_none(&fx.out())
    );

    // `--output` still puts them where it says.
    let out = recon(
        &fx,
        &[
            "--quiet",
            "run",
            "--job",
            "job.toml",
            "--run-date",
            "2024-06-01",
        ]
        .into_iter()
        .chain([
            "--run-id",
            "put",
            "--lake",
            "elsewhere",
            "--output",
            "chosen",
        ])
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(manifests(&fx.path().join("chosen")).len(), 1);
    assert_eq!(manifests(&moved).len(), 1);
    assert!(!fx.out().exists());

    // `validate --lake` shows the same output prefix.
    let out = recon(
        &fx,
        &["validate", "--job", "job.toml", "--lake", "elsewhere"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("/elsewhere/recon/identity"),
        "validate shows another output: {shown}"
    );
}

#[test]
fn each_subcommand_says_what_it_prints() {
    let fx = Fixture::new();
    for (sub, says) in [
        ("run", "run summary"),
        ("diff", "run summary"),
        ("export", "export report"),
        ("apply", "apply summary"),
    ] {
        let out = recon(&fx, &[sub, "--help"]);
        assert!(out.status.success(), "{}", describe(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(says), "{sub} --help lacks {says:?}:\n{help}");
        for other in ["run summary", "export report", "apply summary"] {
            assert!(
                other == says || !help.contains(other),
                "{sub} --help speaks of the {other}:\n{help}"
            );
        }
    }
}
