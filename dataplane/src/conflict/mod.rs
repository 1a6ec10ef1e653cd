//! Conflict detection, and the strategy names stores are configured with.
//!
//! The resolution strategies themselves plug in where `sync::plan` refuses a
//! concurrent write today.

use std::str::FromStr;

use crate::sync::Item;

/// How a concurrent write is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    LastWriteWins,
    FirstWriteWins,
    Merge,
    Manual,
    Assisted,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "LAST_WRITE_WINS" => Ok(Self::LastWriteWins),
            "FIRST_WRITE_WINS" => Ok(Self::FirstWriteWins),
            "MERGE" => Ok(Self::Merge),
            "MANUAL" => Ok(Self::Manual),
            "ASSISTED" | "AI_ASSISTED" => Ok(Self::Assisted),
            other => Err(format!(
                "invalid value '{other}': expected LAST_WRITE_WINS, FIRST_WRITE_WINS, MERGE, MANUAL or ASSISTED"
            )),
        }
    }
}

/// A write based on `based_on` is concurrent with the stored row when it
/// names a version and that is not the row's current version. A write that
/// names no version is a blind overwrite and never conflicts by version.
pub fn is_concurrent(current: &Item, based_on: Option<i64>) -> bool {
    based_on.is_some_and(|v| v != current.version)
}
