//! The Git credential flags shared by `gauntlet up` and `gauntlet release`: a bearer token or
//! HTTP basic authentication, always from a file or an environment variable, never from the
//! command line.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use gauntlet_source::{Auth, Secret};

#[derive(Args, Clone, Debug, Default)]
pub struct GitAuthArgs {
    /// File holding a bearer token for an http(s) repository.
    #[arg(long, conflicts_with_all = ["git_token_env", "git_username"])]
    git_token_file: Option<PathBuf>,
    /// Environment variable holding a bearer token for an http(s) repository.
    #[arg(long)]
    git_token_env: Option<String>,
    /// User name for HTTP basic authentication; the password comes from
    /// --git-password-file or --git-password-env.
    #[arg(long)]
    git_username: Option<String>,
    /// File holding the password for --git-username.
    #[arg(long)]
    git_password_file: Option<PathBuf>,
    /// Environment variable holding the password for --git-username.
    #[arg(long)]
    git_password_env: Option<String>,
}

impl GitAuthArgs {
    /// The credentials these flags name, if any.
    pub fn auth(&self) -> Result<Option<Auth>> {
        if let Some(f) = &self.git_token_file {
            return Ok(Some(Auth::Bearer(Secret::File(f.clone()))));
        }
        if let Some(e) = &self.git_token_env {
            return Ok(Some(Auth::Bearer(Secret::Env(e.clone()))));
        }
        if let Some(user) = &self.git_username {
            let password = match (&self.git_password_file, &self.git_password_env) {
                (Some(f), None) => Secret::File(f.clone()),
                (None, Some(e)) => Secret::Env(e.clone()),
                _ => bail!(
                    "--git-username needs exactly one of --git-password-file or --git-password-env"
                ),
            };
            return Ok(Some(Auth::Basic {
                username: user.clone(),
                password,
            }));
        }
        Ok(None)
    }
}
