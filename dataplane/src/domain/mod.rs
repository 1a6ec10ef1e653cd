//! The data plane's vocabulary: items, changes, conflict strategies and
//! outcomes. Plain data and the rules that need nothing else; this module
//! imports nothing of the crate but the `instant` serde helpers (its own
//! layer), so every other layer can use it.

mod change;
mod conflict;
mod item;
mod rate;
mod secret;

pub use change::Change;
pub use conflict::{ConflictRecord, SetStatus, Strategy};
pub use item::{json_value, Item};
pub use rate::RateInfo;
pub use secret::Secret;
