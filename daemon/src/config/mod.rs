//! The park configuration: one TOML file describes a park.
//!
//! Loading happens in three steps, each collecting *every* error before reporting
//! (STYLE.md §2):
//! 1. parse the TOML into a spanned tree (`toml::de::DeTable`), recovering after syntax
//!    errors;
//! 2. deserialize each section and each `[[array]]` element on its own (so one bad point
//!    does not hide the errors of the next), into the plain serde structs of [`file`];
//! 3. validate ([`validate`]) into the runtime types ([`ParkConfig`]), where every error
//!    names a dotted field path that is resolved back to `FILE:LINE:COL`.
//!
//! Nothing here touches the network or the data directory.

pub mod duration;
pub mod file;
mod load;
mod validate;

pub use load::{ConfigError, load_file, load_str};
pub use validate::ParkConfig;

/// The JSON Schema of the config file, pretty-printed.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(file::ParkFile);
    serde_json::to_string_pretty(&schema).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
