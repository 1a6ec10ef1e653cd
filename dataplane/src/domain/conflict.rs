//! How concurrent writes are settled, and the record of one that was.

use std::str::FromStr;

/// How a concurrent write is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    LastWriteWins,
    FirstWriteWins,
    Merge,
    Manual,
    Assisted,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LastWriteWins => "LAST_WRITE_WINS",
            Self::FirstWriteWins => "FIRST_WRITE_WINS",
            Self::Merge => "MERGE",
            Self::Manual => "MANUAL",
            Self::Assisted => "ASSISTED",
        }
    }
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

/// How a set ended, for the writer's reply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SetStatus {
    Applied,
    Merged,
    Rejected,
    PendingReview,
}

impl SetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Merged => "merged",
            Self::Rejected => "rejected",
            Self::PendingReview => "pending_review",
        }
    }
}

/// A conflict to record, in the shape of the `conflicts` table.
#[derive(Debug, Clone)]
pub struct ConflictRecord {
    pub id: String,
    pub user_id: String,
    pub key: String,
    pub item_id: String,
    pub strategy: Strategy,
    pub outcome: SetStatus,
    pub base_version: Option<i64>,
    pub base_value: Option<String>,
    pub current_version: i64,
    pub current_value: Option<String>,
    pub current_instance: String,
    pub current_ts: i64,
    pub incoming_value: String,
    pub incoming_metadata: Option<String>,
    pub incoming_instance: String,
    pub incoming_ts: i64,
    pub result_value: Option<String>,
    pub result_seq: Option<i64>,
    pub created_at: i64,
}
