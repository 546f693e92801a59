//! The CLI's client of the controller's API: finds it through the state directory, sends the
//! bearer token and the acting user's name, and turns error bodies into readable errors.
//!
//! The client never goes through an HTTP proxy: the controller is local (or reached directly),
//! and a proxy would both break the call and receive the bearer token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gauntlet_reconcile::Status;
use serde::de::DeserializeOwned;

use crate::paths;

/// Time limit of an ordinary call.
const TIMEOUT: Duration = Duration::from_secs(150);

/// Time limit of `POST /api/v1/sync`. The controller waits up to 120 s for a fetch pass and
/// then up to 120 s for a reconcile pass before answering 504; the client must outlast both, or
/// it gives up on a sync that is still succeeding.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn from_state_dir(dir: &Path) -> Result<Client> {
        let info = paths::read_controller_info(dir)?;
        let token = paths::read_token(dir)?;
        Client::new(&info.listen, token)
    }

    pub fn new(listen: &str, token: String) -> Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            base: format!("http://{listen}"),
            token,
            http,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
    }

    /// Fetches, applies and reconciles now (every application), and returns the status after.
    pub fn sync(&self) -> Result<Status> {
        self.send(
            self.http
                .post(format!("{}/api/v1/sync", self.base))
                .json(&serde_json::json!({}))
                .timeout(SYNC_TIMEOUT),
        )
    }

    fn send<T: DeserializeOwned>(&self, req: reqwest::blocking::RequestBuilder) -> Result<T> {
        let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        let resp = req
            .bearer_auth(&self.token)
            .header(gauntlet_api::USER_HEADER, user)
            .send()
            .with_context(|| format!("cannot reach the controller at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().context("reading the controller's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(text);
            bail!("controller answered {status}: {msg}");
        }
        serde_json::from_str(&text).context("the controller's answer is not the expected JSON")
    }
}
