//! Gauntlet's manifests: types, strict parsing with file:line:column diagnostics, validation of
//! a whole tree, the revision hash of a workload, and the JSON Schema generated from the types.

pub mod model;

pub use model::*;

/// Replaces every `${PORT}` in `s` with `port`.
pub fn substitute_port(s: &str, port: u16) -> String {
    s.replace("${PORT}", &port.to_string())
}
