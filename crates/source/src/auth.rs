//! Credentials for HTTP(S) remotes. A [`Secret`] is read afresh at every git call, so a rotated
//! token file is picked up without a restart, and it reaches git only through the environment
//! (`GIT_CONFIG_*` → `http.extraHeader`): never on a command line, where every local user could
//! read it from the process list. SSH remotes use the system ssh and its keys instead.

use base64::Engine as _;
use std::path::PathBuf;

use crate::SourceError;

/// Where a credential is kept.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A file holding the secret; one trailing line break is ignored.
    File(PathBuf),
    /// An environment variable of this process holding the secret.
    Env(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names where the secret lives, never the secret itself.
        write!(f, "Secret({})", self.describe())
    }
}

/// How to authenticate to an HTTP(S) git server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>` (GitLab/Gitea tokens, Azure DevOps...).
    Bearer(Secret),
    /// `Authorization: Basic base64(username:password)`; GitHub accepts a token as the password.
    Basic { username: String, password: Secret },
}

/// A credential resolved for one git call.
pub(crate) struct ResolvedAuth {
    /// The full `Authorization: ...` header line for `http.extraHeader`.
    pub header: String,
    /// Strings to cut out of anything git prints before it goes into an error.
    pub redact: Vec<String>,
}

impl Secret {
    fn describe(&self) -> String {
        match self {
            Secret::File(path) => format!("file {}", path.display()),
            Secret::Env(name) => format!("environment variable {name}"),
        }
    }

    /// Reads the secret now.
    pub(crate) async fn resolve(&self) -> Result<String, SourceError> {
        let fail = |reason: String| SourceError::Secret {
            from: self.describe(),
            reason,
        };
        let raw = match self {
            Secret::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| fail(e.to_string()))?,
            Secret::Env(name) => std::env::var(name).map_err(|e| fail(e.to_string()))?,
        };
        let value = raw.strip_suffix('\n').unwrap_or(&raw);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            return Err(fail("it is empty".into()));
        }
        // A line break would let the value add arbitrary headers to every request.
        if value.chars().any(char::is_control) {
            return Err(fail(
                "it contains a line break or another control character".into(),
            ));
        }
        Ok(value.to_string())
    }
}

impl Auth {
    pub(crate) async fn resolve(&self) -> Result<ResolvedAuth, SourceError> {
        match self {
            Auth::Bearer(token) => {
                let token = token.resolve().await?;
                Ok(ResolvedAuth {
                    header: format!("Authorization: Bearer {token}"),
                    redact: vec![token],
                })
            }
            Auth::Basic { username, password } => {
                if username.contains(':') || username.chars().any(char::is_control) {
                    return Err(SourceError::InvalidConfig {
                        reason: "a basic-auth username cannot contain ':' or control characters"
                            .into(),
                    });
                }
                let password = password.resolve().await?;
                let encoded = basic_credentials(username, &password);
                Ok(ResolvedAuth {
                    header: format!("Authorization: Basic {encoded}"),
                    redact: vec![password, encoded],
                })
            }
        }
    }
}

fn basic_credentials(username: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bearer_header_comes_from_a_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let resolved = Auth::Bearer(Secret::File(path)).resolve().await.unwrap();
        assert_eq!(resolved.header, "Authorization: Bearer s3cret");
        assert_eq!(resolved.redact, vec!["s3cret".to_string()]);
    }

    #[tokio::test]
    async fn basic_header_is_base64_of_user_and_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "open sesame").unwrap();
        let auth = Auth::Basic {
            username: "Aladdin".into(),
            password: Secret::File(path),
        };
        let resolved = auth.resolve().await.unwrap();
        // RFC 7617's example.
        assert_eq!(
            resolved.header,
            "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[tokio::test]
    async fn a_secret_with_an_embedded_line_break_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\nX-Evil: 1\n").unwrap();
        let err = Auth::Bearer(Secret::File(path))
            .resolve()
            .await
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::Secret { .. }));
        assert!(!err.to_string().contains("abc"));
    }

    #[tokio::test]
    async fn a_missing_secret_names_where_it_was_looked_for() {
        let err = Secret::Env("GAUNTLET_TEST_SURELY_UNSET_VARIABLE".into())
            .resolve()
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("GAUNTLET_TEST_SURELY_UNSET_VARIABLE"),
            "{err}"
        );
    }
}
