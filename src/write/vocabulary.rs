//! The output's vocabulary, one enum for each word a discrepancy or correction file
//! holds: the correction op, the discrepancy kind, its reason and the action taken. The
//! text of each is part of the output contract (README, "Output contract"); the code
//! speaks of the enums and turns them into text only where a file is written, and back
//! only where one is read.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Defines a vocabulary enum with its contract text, `as_str`, `Display`, `FromStr`
/// (naming the allowed words on a mismatch) and `ALL`.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word as the output files hold it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}` (one of {})",
                        $what,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

vocabulary! {
    /// A correction's operation (the `op` column of a correction file).
    Op, "op" {
        Insert => "insert",
        Update => "update",
        Delete => "delete",
        /// Sets the replica's soft-delete column (`deletes = "soft"`).
        SoftDelete => "soft_delete",
    }
}

vocabulary! {
    /// What a discrepancy row reports (its `kind`). Declared in the order of the
    /// words, which orders the run summary's counts.
    Kind, "discrepancy kind" {
        DuplicateKey => "duplicate_key",
        ExtraInReplica => "extra_in_replica",
        FieldMismatch => "field_mismatch",
        MissingInReplica => "missing_in_replica",
        NullKey => "null_key",
    }
}

vocabulary! {
    /// What recon does about a discrepancy (its `action`).
    Action, "action" {
        CorrectReplica => "correct_replica",
        CorrectSource => "correct_source",
        ReportOnly => "report_only",
    }
}

vocabulary! {
    /// Why a discrepancy row is there (its `reason`): how two values differ, where a
    /// data-quality row was found, or why a correction was withheld.
    Reason, "reason" {
        /// One value is NULL, the other is not.
        NullVsValue => "null_vs_value",
        /// The values differ.
        Value => "value",
        /// The texts differ in case only (reported under a case-sensitive rule).
        CaseOnly => "case_only",
        /// The texts differ in leading or trailing whitespace only.
        WhitespaceOnly => "whitespace_only",
        /// Numbers differ by more than the tolerance.
        NumericDelta => "numeric_delta",
        /// A data-quality row found in the source snapshot.
        InSource => "in_source",
        /// A data-quality row found in the replica snapshot.
        InReplica => "in_replica",
        /// The corrected column cannot hold the value exactly: the correction is
        /// withheld.
        Unrepresentable => "unrepresentable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for op in Op::ALL {
            assert_eq!(op.as_str().parse::<Op>(), Ok(*op));
            assert_eq!(serde_json::to_string(op).unwrap(), format!("\"{op}\""));
        }
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(*k));
        }
        assert!(Kind::ALL.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(*a));
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(*r));
        }
        let e = "upsert".parse::<Op>().unwrap_err();
        assert!(e.contains("`upsert`") && e.contains("soft_delete"), "{e}");
    }
}
