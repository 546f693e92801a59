//! Gauntlet's manifests: types, strict parsing with file:line:column diagnostics, validation of
//! a whole tree, the revision hash of a workload, and the JSON Schema generated from the types.
//!
//! The pieces, in the order a tree goes through them:
//!
//! - [`read_dir`] (`files.rs`) collects the YAML and JSON files of a checkout as
//!   [`SourceFile`]s.
//! - [`parse`] (`parse.rs`) cuts each file into documents, reads each one's `apiVersion` and
//!   `kind`, and hands it to its [`Kind`] (`document.rs`) to be read strictly as a
//!   [`model`] type. Errors carry file, line, column and field path ([`Diagnostic`]).
//! - `flags.rs` reads `kind: FeatureFlags` documents and `*.flagd.json` files as flagd flag
//!   sets (checked by `gauntlet-flags`, problems placed at their line), and merges the sets of
//!   a tree into one store; a flag key defined twice is an error naming both places.
//! - `validate.rs` checks what types cannot say: names, digests, addresses, probes, unique
//!   names and listen addresses, and an acyclic `dependsOn` graph. `strategy.rs` does the same
//!   for `spec.strategy` (the `gauntlet-rollout` crate's types) and `kind: AnalysisTemplate`
//!   documents: weights, header routes, the guard, preview addresses, conditions, and every
//!   `templateName` naming a template of the tree with the arguments it needs. Any problem
//!   rejects the whole tree, so a half-valid commit is never applied.
//! - `experiment.rs` reads `kind: ChaosExperiment` documents (`gauntlet-chaos`'s spec, its
//!   problems placed at their line), and checks that an experiment's target and `dependency`
//!   faults name applications of the tree and every `chaos` step names an experiment of it.
//! - The result is a [`DesiredState`] (`state.rs`): applications, analysis templates, chaos
//!   experiments and flags. [`Application::revision`] (`revision.rs`) names what a rollout
//!   moves between (the workload only: neither the strategy nor a template nor an experiment
//!   is part of it), and [`schema`] (`schema.rs`) describes the documents for editors.
//!
//! ```
//! use gauntlet_spec::{parse, SourceFile};
//!
//! let bad = SourceFile {
//!     path: "apps/web.yaml".into(),
//!     contents: "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\n\
//!                metadata: {name: web}\nspec:\n  replicaz: 2\n"
//!         .into(),
//! };
//! let errors = parse(&[bad]).unwrap_err();
//! assert!(errors.to_string().starts_with("apps/web.yaml:5:3: spec.replicaz: unknown field"));
//! ```

mod diagnostic;
mod document;
mod experiment;
mod fields;
mod files;
mod flags;
pub mod model;
mod parse;
mod revision;
mod schema;
mod state;
mod strategy;
mod validate;

pub use diagnostic::{Diagnostic, Diagnostics, Located, Origin};
pub use document::{Document, Kind};
pub use files::read_dir;
pub use flags::DeclaredFlags;
pub use model::*;
pub use parse::{parse, Parser, SourceFile};
pub use schema::schema;
pub use state::{Declared, DesiredState};
pub use validate::MAX_REPLICAS;

/// Replaces every `${PORT}` in `s` with `port`.
pub fn substitute_port(s: &str, port: u16) -> String {
    s.replace("${PORT}", &port.to_string())
}
