//! Real repositories and a real `git daemon` for the integration tests.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git for test setup, isolated from the user's configuration; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Tess Ter",
            "-c",
            "user.email=tess@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(["-c", "init.defaultBranch=main", "-c", "tag.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with a working tree that plays the remote; committing to it is pushing.
pub struct Remote {
    pub dir: PathBuf,
}

impl Remote {
    pub fn init(dir: PathBuf) -> Remote {
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "--quiet"]);
        Remote { dir }
    }

    /// Writes `files` (path, contents), removes `remove`, commits everything, returns the sha.
    pub fn commit(&self, files: &[(&str, &str)], remove: &[&str], message: &str) -> String {
        for (path, contents) in files {
            let full = self.dir.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, contents).unwrap();
        }
        for path in remove {
            git(&self.dir, &["rm", "--quiet", path]);
        }
        git(&self.dir, &["add", "--all"]);
        git(
            &self.dir,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    /// What a `git push --force` to `main` of `commit` does to the remote.
    pub fn force_main_to(&self, commit: &str) {
        git(&self.dir, &["reset", "--quiet", "--hard", commit]);
    }

    /// Replaces `main` with a single commit that shares no history with the old one.
    pub fn replace_history(&self, files: &[(&str, &str)], message: &str) -> String {
        git(&self.dir, &["checkout", "--quiet", "--orphan", "fresh"]);
        git(&self.dir, &["rm", "-r", "--quiet", "--cached", "."]);
        git(&self.dir, &["clean", "-fdxq"]);
        let sha = self.commit(files, &[], message);
        git(&self.dir, &["branch", "-M", "main"]);
        sha
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// Polls `condition` until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// A port nothing listens on (bound, read, released).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `git daemon` serving every repository under a directory on 127.0.0.1; killed when dropped.
pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(base: &Path) -> Daemon {
        // The `git-daemon` program itself: `git daemon` would run it as a child that a kill of
        // the wrapper leaves listening.
        let exec_path = PathBuf::from(git(base, &["--exec-path"]));
        let port = closed_port();
        let child = Command::new(exec_path.join("git-daemon"))
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", base.display()))
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git-daemon starts");
        let daemon = Daemon { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "git daemon did not listen on {addr}"
        );
        daemon
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
