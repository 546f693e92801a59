//! `gauntlet flags`: the feature flags the controller serves, through its admin API
//! (`/api/v1/flags`, with the admin token; applications use OFREP instead).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::Output;

#[derive(Subcommand)]
pub enum FlagsCommand {
    /// List every flag of the applied commit: state, type, default variant, where it is defined.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show one flag: its variants, default variant, targeting and metadata.
    Get {
        key: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Evaluate one flag for a context, as an application would over OFREP; prints the value,
    /// variant and reason (exits non-zero if the evaluation is an error).
    Eval {
        key: String,
        /// The evaluation context, a JSON object such as '{"targetingKey": "user-1", "plan": "pro"}'.
        #[arg(long, default_value = "{}")]
        context: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

pub fn run(state_dir: &Path, command: FlagsCommand) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    match command {
        FlagsCommand::List { output } => {
            let all: Value = client.get("/api/v1/flags")?;
            print(&all, output, |out| list_table(out, &all))?;
            Ok(ExitCode::SUCCESS)
        }
        FlagsCommand::Get { key, output } => {
            let flag: Value = client.get(&format!("/api/v1/flags/{}", encode(&key)))?;
            print(&flag, output, |out| flag_table(out, &flag))?;
            Ok(ExitCode::SUCCESS)
        }
        FlagsCommand::Eval {
            key,
            context,
            output,
        } => {
            let context: Value = serde_json::from_str(&context).context(
                "--context is not JSON; give an object such as '{\"targetingKey\": \"user-1\"}'",
            )?;
            anyhow::ensure!(
                context.is_object(),
                "--context must be a JSON object, such as '{{\"targetingKey\": \"user-1\"}}'"
            );
            let result: Value = client.post(
                &format!("/api/v1/flags/{}/evaluate", encode(&key)),
                serde_json::json!({ "context": context }),
            )?;
            print(&result, output, |out| eval_table(out, &result))?;
            Ok(if result.get("errorCode").is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn print(
    value: &Value,
    output: Output,
    table: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => write!(
            out,
            "{}",
            serde_saphyr::to_string(value).context("rendering YAML")?
        )?,
        Output::Table => table(&mut out)?,
    }
    Ok(())
}

/// A JSON value on one line; strings without quotes.
fn inline(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn list_table(out: &mut dyn Write, all: &Value) -> std::io::Result<()> {
    let flags = all["flags"].as_array().cloned().unwrap_or_default();
    let commit = all["commit"].as_str().unwrap_or_default();
    writeln!(
        out,
        "{} flags from commit {}",
        flags.len(),
        if commit.is_empty() {
            "(none yet)"
        } else {
            crate::commands::short(commit)
        }
    )?;
    if flags.is_empty() {
        return Ok(());
    }
    let rows: Vec<[String; 6]> = flags
        .iter()
        .map(|f| {
            [
                inline(&f["key"]),
                inline(&f["state"]),
                inline(&f["type"]),
                inline(&f["defaultVariant"]),
                if f["targeting"].is_null() {
                    "no"
                } else {
                    "yes"
                }
                .to_string(),
                inline(&f["source"]),
            ]
        })
        .collect();
    let header = ["KEY", "STATE", "TYPE", "DEFAULT", "TARGETING", "SOURCE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

fn flag_table(out: &mut dyn Write, f: &Value) -> std::io::Result<()> {
    writeln!(out, "key:       {}", inline(&f["key"]))?;
    writeln!(out, "state:     {}", inline(&f["state"]))?;
    writeln!(out, "type:      {}", inline(&f["type"]))?;
    writeln!(out, "source:    {}", inline(&f["source"]))?;
    writeln!(out, "default:   {}", inline(&f["defaultVariant"]))?;
    writeln!(out, "variants:")?;
    if let Some(variants) = f["variants"].as_object() {
        for (name, value) in variants {
            writeln!(out, "  {name}: {value}")?;
        }
    }
    writeln!(out, "targeting: {}", inline(&f["targeting"]))?;
    if f["metadata"].as_object().is_some_and(|m| !m.is_empty()) {
        writeln!(out, "metadata:  {}", f["metadata"])?;
    }
    Ok(())
}

fn eval_table(out: &mut dyn Write, r: &Value) -> std::io::Result<()> {
    let value = r
        .get("value")
        .map_or_else(|| "(the caller's default)".to_string(), |v| v.to_string());
    writeln!(out, "value:   {value}")?;
    writeln!(
        out,
        "variant: {}",
        inline(r.get("variant").unwrap_or(&Value::Null))
    )?;
    writeln!(out, "reason:  {}", inline(&r["reason"]))?;
    if let Some(code) = r.get("errorCode") {
        writeln!(
            out,
            "error:   {}: {}",
            inline(code),
            inline(r.get("errorDetails").unwrap_or(&Value::Null))
        )?;
    }
    Ok(())
}

/// Percent-encodes a flag key for one path segment (keys may hold `/`, spaces, anything).
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_one_path_segment() {
        assert_eq!(encode("new-checkout"), "new-checkout");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
