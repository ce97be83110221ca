//! The sample lake: a monolith (source) and a service replica holding tenants, users,
//! groups and memberships, with the planted discrepancies that `sample-data/README.md`
//! and `sample-data/planted.csv` list. Deterministic; `scale` grows the clean rows only,
//! so the planted set is the same at every size.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

pub mod bench;

/// The run date of the sample snapshots.
pub const SAMPLE_RUN_DATE: &str = "2024-06-01";
/// Tenants in the sample (fixed), users and groups per tenant (times `scale`).
const TENANTS: i64 = 10;
const USERS_PER_TENANT: i64 = 8;
const GROUPS_PER_TENANT: i64 = 3;
const MEMBERS_PER_GROUP: i64 = 4;
/// 2024-05-01T00:00:00Z in microseconds.
const BASE_US: i64 = 1_714_521_600_000_000;
const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 3_600_000_000;

pub struct Sample {
    pub scale: i64,
}

#[derive(Clone)]
struct Tenant {
    id: i64,
    name: String,
    plan: String,
    created_at: i64,
}

#[derive(Clone)]
struct User {
    tenant_id: i64,
    user_id: String,
    email: String,
    display_name: String,
    nickname: Option<String>,
    /// cents
    balance: Option<i128>,
    score: f64,
    bio: String,
    phone: Option<String>,
    last_login: Option<i64>,
    updated_at: i64,
    deleted_at: Option<i64>,
}

#[derive(Clone)]
struct Group {
    tenant_id: Option<i64>,
    group_id: Option<String>,
    name: String,
    created_at: i64,
}

#[derive(Clone)]
struct Membership {
    tenant_id: i64,
    group_id: String,
    user_id: Option<String>,
    role: String,
    added_at: i64,
}

fn uid(n: i64) -> String {
    format!("u{n:04}")
}
fn gid(n: i64) -> String {
    format!("g{n:03}")
}

impl Sample {
    fn tenants(&self) -> Vec<Tenant> {
        (1..=TENANTS)
            .map(|id| Tenant {
                id,
                name: format!("Tenant {id}"),
                plan: ["basic", "pro", "enterprise"][(id % 3) as usize].to_string(),
                created_at: BASE_US - id * 24 * HOUR_US,
            })
            .collect()
    }

    fn users(&self) -> Vec<User> {
        let mut out = Vec::new();
        for t in 1..=TENANTS {
            for n in 1..=USERS_PER_TENANT * self.scale {
                let k = t * 100_000 + n;
                out.push(User {
                    tenant_id: t,
                    user_id: uid(n),
                    email: format!("user{n}@tenant{t}.example.com"),
                    display_name: format!("User {t}-{n}"),
                    nickname: (n % 3 == 0).then(|| format!("nick{n}")),
                    balance: Some(((k * 37) % 1_000_000) as i128),
                    score: (n as f64) * 1.5,
                    bio: format!("bio of user {n}"),
                    phone: (n % 2 == 0).then(|| format!("555-{t:02}{n:05}")),
                    last_login: (n % 5 != 0).then(|| BASE_US + (k % 10_000) * MINUTE_US),
                    updated_at: BASE_US + (k % 500) * HOUR_US,
                    deleted_at: None,
                });
            }
        }
        out
    }

    fn groups(&self) -> Vec<Group> {
        let mut out = Vec::new();
        for t in 1..=TENANTS {
            for n in 1..=GROUPS_PER_TENANT * self.scale {
                out.push(Group {
                    tenant_id: Some(t),
                    group_id: Some(gid(n)),
                    name: format!("Group {n}"),
                    created_at: BASE_US + (t * 10 + n) * HOUR_US,
                });
            }
        }
        out
    }

    fn memberships(&self) -> Vec<Membership> {
        let users = USERS_PER_TENANT * self.scale;
        let mut out = Vec::new();
        for t in 1..=TENANTS {
            for g in 1..=GROUPS_PER_TENANT * self.scale {
                for m in 0..MEMBERS_PER_GROUP {
                    let n = (g * 3 + m) % users + 1;
                    out.push(Membership {
                        tenant_id: t,
                        group_id: gid(g),
                        user_id: Some(uid(n)),
                        role: if m == 0 { "owner" } else { "member" }.to_string(),
                        added_at: BASE_US + (g * 7 + m) * MINUTE_US,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (a.tenant_id, &a.group_id, &a.user_id).cmp(&(b.tenant_id, &b.group_id, &b.user_id))
        });
        out.dedup_by(|a, b| {
            (a.tenant_id, &a.group_id, &a.user_id) == (b.tenant_id, &b.group_id, &b.user_id)
        });
        out
    }

    /// Writes both systems' snapshots under `lake/snapshots/…/run_date=2024-06-01/`.
    pub fn write(&self, lake: &Path) -> Result<()> {
        // ---- tenants: Int64/µs UTC in the monolith, Int32/ms naive in the service.
        let mono_t = self.tenants();
        let mut serv_t = mono_t.clone();
        serv_t.retain(|t| t.id != 5); // T1 missing_in_replica
        serv_t.push(Tenant {
            id: 900,
            name: "Restored Ltd".into(),
            plan: "basic".into(),
            created_at: BASE_US,
        }); // T2 extra
        for t in &mut serv_t {
            if t.id == 3 {
                t.plan = "legacy".into(); // T3 field_mismatch plan
            }
        }
        // T4 sub-millisecond created_at in the monolith: equal under precision = "ms".
        let mut mono_t = mono_t;
        mono_t[6].created_at += 500;
        self.put(lake, "monolith", "tenants", tenants_batch(&mono_t, false)?)?;
        self.put(lake, "service", "tenants", tenants_batch(&serv_t, true)?)?;

        // ---- users
        let mono_u = self.users();
        let mut mono_u = mono_u;
        let mut serv_u = mono_u.clone();
        let find = |v: &[User], t: i64, n: &str| -> usize {
            v.iter()
                .position(|u| u.tenant_id == t && u.user_id == n)
                .expect("planted user exists")
        };
        // U1 case-only email difference: equal under case_insensitive.
        let i = find(&serv_u, 1, "u0002");
        serv_u[i].email = serv_u[i].email.to_uppercase();
        // U2 email differs.
        let i = find(&serv_u, 1, "u0003");
        serv_u[i].email = "someone.else@tenant1.example.com".into();
        // U3 balance within abs_tol 0.01 (exactly at the boundary).
        let i = find(&serv_u, 1, "u0004");
        serv_u[i].balance = serv_u[i].balance.map(|b| b + 1);
        // U4 balance beyond tolerance (0.02).
        let i = find(&serv_u, 1, "u0005");
        serv_u[i].balance = serv_u[i].balance.map(|b| b + 2);
        // U5 NaN on both sides, -0.0 vs 0.0: equal.
        let i = find(&mono_u, 1, "u0006");
        mono_u[i].score = f64::NAN;
        serv_u[i].score = f64::NAN;
        let i = find(&mono_u, 1, "u0007");
        mono_u[i].score = 0.0;
        serv_u[i].score = -0.0;
        // U6 score within rel_tol 0.001, and beyond it.
        let i = find(&mono_u, 2, "u0001");
        mono_u[i].score = 100.0;
        serv_u[i].score = 100.05;
        let i = find(&mono_u, 2, "u0002");
        mono_u[i].score = 100.0;
        serv_u[i].score = 101.0;
        // U7 bio: surrounding whitespace is trimmed; a case change is not.
        let i = find(&serv_u, 2, "u0003");
        serv_u[i].bio = format!("  {} ", serv_u[i].bio);
        let i = find(&serv_u, 2, "u0004");
        serv_u[i].bio = serv_u[i].bio.to_uppercase();
        // U8 phone: NULL equals empty; NULL vs a value does not.
        let i = find(&mono_u, 2, "u0005");
        mono_u[i].phone = None;
        serv_u[i].phone = Some(String::new());
        let i = find(&mono_u, 2, "u0007");
        mono_u[i].phone = None;
        serv_u[i].phone = Some("555-0000".into());
        // U9 last_login is owned by the replica.
        let i = find(&serv_u, 3, "u0001");
        serv_u[i].last_login = Some(BASE_US + 40 * 24 * HOUR_US);
        // U10 display_name: newest wins by updated_at, both ways.
        let i = find(&serv_u, 3, "u0002");
        serv_u[i].display_name = "Renamed In Service".into();
        serv_u[i].updated_at += HOUR_US;
        let i = find(&mono_u, 3, "u0003");
        mono_u[i].display_name = "Renamed In Monolith".into();
        mono_u[i].updated_at += HOUR_US;
        // U11 nickname is report-only.
        let i = find(&serv_u, 3, "u0006");
        serv_u[i].nickname = Some("changed".into());
        // U12 updated_at alone is ignored.
        let i = find(&serv_u, 3, "u0005");
        serv_u[i].updated_at += 5 * HOUR_US;
        // U13 missing in the replica.
        let i = find(&serv_u, 4, "u0001");
        serv_u.remove(i);
        // U14 phantom in the replica.
        let mut phantom = serv_u[find(&serv_u, 4, "u0002")].clone();
        phantom.user_id = "u9001".into();
        phantom.email = "phantom@tenant4.example.com".into();
        serv_u.push(phantom);
        // U15 soft-deleted in the monolith, live in the service.
        let i = find(&mono_u, 4, "u0002");
        mono_u[i].deleted_at = Some(BASE_US + 30 * 24 * HOUR_US);
        // U16 soft-deleted in the service, live in the monolith.
        let i = find(&serv_u, 4, "u0003");
        serv_u[i].deleted_at = Some(BASE_US + 30 * 24 * HOUR_US);
        // U17 soft-deleted on both sides, with different values: absent on both.
        let i = find(&mono_u, 4, "u0004");
        mono_u[i].deleted_at = Some(BASE_US + 30 * 24 * HOUR_US);
        mono_u[i].email = "gone@tenant4.example.com".into();
        let i = find(&serv_u, 4, "u0004");
        serv_u[i].deleted_at = Some(BASE_US + 31 * 24 * HOUR_US);
        // U18 two fields of one row, owned by different sides.
        let i = find(&serv_u, 4, "u0005");
        serv_u[i].email = "moved@tenant4.example.com".into();
        serv_u[i].last_login = Some(BASE_US + 41 * 24 * HOUR_US);
        // U19 balance NULL in the monolith.
        let i = find(&mono_u, 5, "u0001");
        mono_u[i].balance = None;
        // U20 composite key with a string part that looks like another's parts.
        let mut odd = mono_u[find(&mono_u, 6, "u0001")].clone();
        odd.user_id = "u|x".into();
        mono_u.push(odd.clone());
        odd.tenant_id = 6;
        odd.user_id = "u".into();
        serv_u.push(odd);
        self.put(lake, "monolith", "users", users_batch(&mono_u, false)?)?;
        self.put(lake, "service", "users", users_batch(&serv_u, true)?)?;

        // ---- groups (deletes = report)
        let mut mono_g = self.groups();
        let mut serv_g = mono_g.clone();
        // G1 phantom group: reported, never deleted.
        serv_g.push(Group {
            tenant_id: Some(1),
            group_id: Some("g900".into()),
            name: "Ghost".into(),
            created_at: BASE_US,
        });
        // G2 case-only name difference (exact rule).
        let i = serv_g
            .iter()
            .position(|g| g.tenant_id == Some(2) && g.group_id.as_deref() == Some("g001"))
            .expect("g");
        serv_g[i].name = serv_g[i].name.to_lowercase();
        // G3 a NULL key part in the monolith.
        mono_g.push(Group {
            tenant_id: Some(1),
            group_id: None,
            name: "Orphan".into(),
            created_at: BASE_US,
        });
        // G4 a duplicate key in the service (and a differing name that must not be compared).
        let i = serv_g
            .iter()
            .position(|g| g.tenant_id == Some(3) && g.group_id.as_deref() == Some("g002"))
            .expect("g");
        let mut dup = serv_g[i].clone();
        dup.name = "Duplicate".into();
        serv_g.push(dup);
        // G5 missing in the replica.
        serv_g.retain(|g| !(g.tenant_id == Some(5) && g.group_id.as_deref() == Some("g001")));
        self.put(lake, "monolith", "groups", groups_batch(&mono_g)?)?;
        self.put(lake, "service", "groups", groups_batch(&serv_g)?)?;

        // ---- memberships (three-part key, two adjacent strings)
        let mut mono_m = self.memberships();
        let mut serv_m = mono_m.clone();
        // M1 keys that collide if parts were joined with `|`.
        mono_m.push(Membership {
            tenant_id: 1,
            group_id: "a|b".into(),
            user_id: Some("c".into()),
            role: "member".into(),
            added_at: BASE_US,
        });
        serv_m.push(Membership {
            tenant_id: 1,
            group_id: "a".into(),
            user_id: Some("b|c".into()),
            role: "member".into(),
            added_at: BASE_US,
        });
        // M2 a NULL key part in the service.
        serv_m.push(Membership {
            tenant_id: 2,
            group_id: "g001".into(),
            user_id: None,
            role: "member".into(),
            added_at: BASE_US,
        });
        // M3 a duplicate key in the monolith (one copy in the service: not compared).
        let first = mono_m
            .iter()
            .position(|m| m.tenant_id == 1 && m.group_id == "g001")
            .expect("m");
        let dup = mono_m[first].clone();
        mono_m.push(dup);
        // M4 role differs.
        let i = serv_m
            .iter()
            .position(|m| m.tenant_id == 2 && m.group_id == "g002" && m.role == "owner")
            .expect("m");
        serv_m[i].role = "member".into();
        // M5 phantom membership: hard delete.
        serv_m.push(Membership {
            tenant_id: 2,
            group_id: "g002".into(),
            user_id: Some("u0099".into()),
            role: "member".into(),
            added_at: BASE_US,
        });
        self.put(lake, "monolith", "memberships", memberships_batch(&mono_m)?)?;
        self.put(lake, "service", "memberships", memberships_batch(&serv_m)?)?;
        Ok(())
    }

    fn put(&self, lake: &Path, system: &str, entity: &str, batch: RecordBatch) -> Result<()> {
        let dir = lake
            .join("snapshots")
            .join(system)
            .join(entity)
            .join(format!("run_date={SAMPLE_RUN_DATE}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("part-00000.parquet");
        let file = File::create(&path)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", path.display())))?;
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(64 * 1024))
            .set_created_by("recon generate".into())
            .build();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))
            .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
        w.write(&batch)
            .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
        w.close()
            .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
        Ok(())
    }
}

fn ts_us(utc: bool) -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, utc.then(|| "UTC".into()))
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::bug("generating the sample data", e))
}

fn micros(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(v).with_timezone("UTC"))
}

fn tenants_batch(rows: &[Tenant], service: bool) -> Result<RecordBatch> {
    let id: ArrayRef = if service {
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|t| t.id as i32),
        ))
    } else {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|t| t.id)))
    };
    let created: ArrayRef = if service {
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|t| t.created_at / 1000),
        ))
    } else {
        micros(rows.iter().map(|t| Some(t.created_at)))
    };
    batch(
        vec![
            Field::new(
                "tenant_id",
                if service {
                    DataType::Int32
                } else {
                    DataType::Int64
                },
                false,
            ),
            Field::new("name", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
            Field::new("created_at", created.data_type().clone(), false),
        ],
        vec![
            id,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|t| &t.name))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|t| &t.plan))),
            created,
        ],
    )
}

fn users_batch(rows: &[User], service: bool) -> Result<RecordBatch> {
    let tenant: ArrayRef = if service {
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|u| u.tenant_id as i32),
        ))
    } else {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|u| u.tenant_id),
        ))
    };
    let (precision, scale, factor) = if service { (14, 4, 100) } else { (12, 2, 1) };
    let balance = Decimal128Array::from_iter(rows.iter().map(|u| u.balance.map(|b| b * factor)))
        .with_precision_and_scale(precision, scale)
        .map_err(|e| Error::bug("generating the sample data", e))?;
    let last_login: ArrayRef = if service {
        Arc::new(TimestampMillisecondArray::from_iter(
            rows.iter().map(|u| u.last_login.map(|v| v / 1000)),
        ))
    } else {
        micros(rows.iter().map(|u| u.last_login))
    };
    let mut fields = vec![
        Field::new("tenant_id", tenant.data_type().clone(), false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new(
            if service { "email_address" } else { "email" },
            DataType::Utf8,
            false,
        ),
        Field::new("display_name", DataType::Utf8, false),
        Field::new("nickname", DataType::Utf8, true),
        Field::new("balance", balance.data_type().clone(), true),
        Field::new("score", DataType::Float64, false),
        Field::new("bio", DataType::Utf8, false),
        Field::new("phone", DataType::Utf8, true),
        Field::new("last_login", last_login.data_type().clone(), true),
        Field::new("updated_at", ts_us(true), false),
        Field::new("deleted_at", ts_us(true), true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        tenant,
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|u| &u.user_id),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|u| &u.email))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|u| &u.display_name),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|u| u.nickname.as_deref()),
        )),
        Arc::new(balance),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|u| u.score))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|u| &u.bio))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|u| u.phone.as_deref()),
        )),
        last_login,
        micros(rows.iter().map(|u| Some(u.updated_at))),
        micros(rows.iter().map(|u| u.deleted_at)),
    ];
    if service {
        // A column only the service has: not named in the job, so never compared.
        fields.push(Field::new("internal_version", DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|_| 1),
        )));
    }
    batch(fields, columns)
}

fn groups_batch(rows: &[Group]) -> Result<RecordBatch> {
    batch(
        vec![
            Field::new("tenant_id", DataType::Int64, true),
            Field::new("group_id", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("created_at", ts_us(true), false),
        ],
        vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|g| g.tenant_id))),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|g| g.group_id.as_deref()),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|g| &g.name))),
            micros(rows.iter().map(|g| Some(g.created_at))),
        ],
    )
}

fn memberships_batch(rows: &[Membership]) -> Result<RecordBatch> {
    batch(
        vec![
            Field::new("tenant_id", DataType::Int64, false),
            Field::new("group_id", DataType::Utf8, false),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("role", DataType::Utf8, false),
            Field::new("added_at", ts_us(true), false),
        ],
        vec![
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|m| m.tenant_id),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|m| &m.group_id),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|m| m.user_id.as_deref()),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|m| &m.role))),
            micros(rows.iter().map(|m| Some(m.added_at))),
        ],
    )
}

/// The sample's run date as a date.
pub fn sample_run_date() -> NaiveDate {
    NaiveDate::parse_from_str(SAMPLE_RUN_DATE, "%Y-%m-%d").expect("valid constant")
}
