//! `GitSource` over SSH: a real `sshd` on 127.0.0.1 with its own host key and one authorized
//! client key, reached through the system `ssh` configured the way a user would, with
//! `GIT_SSH_COMMAND`.
//!
//! `GIT_SSH_COMMAND` is process-wide, so every SSH case lives in the one test of this binary.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{closed_port, wait_until, Remote};
use gauntlet_source::{GitSource, SourceConfig, SourceError};

const SSHD: &str = "/usr/sbin/sshd";

/// Runs `program args`, panicking with its stderr on failure; returns trimmed stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; install openssh-client"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A passphrase-less ed25519 key pair at `path` and `path.pub`.
fn keygen(path: &Path) -> PathBuf {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().unwrap(),
        ],
    );
    path.to_path_buf()
}

fn public_key(private: &Path) -> String {
    std::fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// An `sshd` accepting one user with one public key on 127.0.0.1; killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, user: &str, client_public_key: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: the SSH transport test needs OpenSSH's server; install it \
             (Debian: apt-get install openssh-server openssh-client)"
        );
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")
            .unwrap_or_else(|e| panic!("sshd needs /run/sshd and it cannot be created: {e}"));

        let host_key = keygen(&dir.join("host_key"));
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, format!("{client_public_key}\n")).unwrap();
        let port = closed_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PidFile {pid}\n\
                 AllowUsers {user}\n",
                host_key = host_key.display(),
                authorized_keys = authorized_keys.display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();

        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
        let mut sshd = Sshd { child, port, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut exited = None;
        let listening = wait_until(Duration::from_secs(10), || {
            exited = sshd.child.try_wait().unwrap();
            exited.is_some() || TcpStream::connect(addr).is_ok()
        });
        assert!(
            listening && exited.is_none(),
            "sshd did not listen on {addr} (exit: {exited:?}): {}",
            sshd.log()
        );
        sshd
    }

    /// The line a `known_hosts` file needs to trust this server on its port.
    fn known_hosts_line(&self, dir: &Path) -> String {
        format!(
            "[127.0.0.1]:{} {}\n",
            self.port,
            public_key(&dir.join("host_key"))
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a user puts in `GIT_SSH_COMMAND` to reach this server with `key`: nothing from
/// `~/.ssh` or an agent, and never a prompt.
fn ssh_command(key: &Path, known_hosts: &Path, port: u16) -> String {
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none \
         -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {port}",
        key.display(),
        known_hosts.display()
    )
}

fn source(repo: String, cache: PathBuf) -> GitSource {
    GitSource::new(SourceConfig {
        repo,
        reference: "main".into(),
        path: "apps".into(),
        auth: None,
        cache_dir: cache,
    })
    // Generous: a hung ssh would show up as `Timeout` rather than as the expected error.
    .with_timeout(Duration::from_secs(30))
}

#[tokio::test]
async fn ssh_remotes_are_read_with_the_users_key_and_refuse_a_wrong_one_without_prompting() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let user = run("id", &["-un"]);
    let client_key = keygen(&keys.join("client"));
    let wrong_key = keygen(&keys.join("stranger"));
    let sshd = Sshd::start(&keys, &user, &public_key(&client_key));
    let known_hosts = keys.join("known_hosts");
    std::fs::write(&known_hosts, sshd.known_hosts_line(&keys)).unwrap();

    let remote = Remote::init(tmp.path().join("served/deploy"));
    let head = remote.commit(
        &[
            ("apps/checkout.yaml", "kind: Application\n"),
            ("README.md", "not a manifest"),
        ],
        &[],
        "init",
    );
    let repo_path = remote.dir.display().to_string();
    let ssh_url = format!("ssh://{user}@127.0.0.1:{}{repo_path}", sshd.port);
    let scp_like = format!("{user}@127.0.0.1:{repo_path}");

    std::env::set_var(
        "GIT_SSH_COMMAND",
        ssh_command(&client_key, &known_hosts, sshd.port),
    );
    for (name, url) in [("url", &ssh_url), ("scp", &scp_like)] {
        let source = source(url.clone(), tmp.path().join(format!("cache-{name}")));
        let remote_head = source
            .remote_head()
            .await
            .unwrap_or_else(|e| panic!("remote_head of {url}: {e}\nsshd: {}", sshd.log()));
        assert_eq!(remote_head, head, "{url}");
        let snapshot = source
            .fetch(&head)
            .await
            .unwrap_or_else(|e| panic!("fetch of {url}: {e}\nsshd: {}", sshd.log()));
        assert_eq!(snapshot.commit, head, "{url}");
        let paths: Vec<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["apps/checkout.yaml"], "{url}");
    }

    std::env::set_var(
        "GIT_SSH_COMMAND",
        ssh_command(&wrong_key, &known_hosts, sshd.port),
    );
    let stranger = source(ssh_url.clone(), tmp.path().join("cache-stranger"));
    let err = stranger.remote_head().await.err().unwrap();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    let err = stranger.fetch(&head).await.err().unwrap();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");

    // The right key, but a server the known_hosts file does not vouch for.
    let empty_known_hosts = keys.join("known_hosts.empty");
    std::fs::write(&empty_known_hosts, "").unwrap();
    std::env::set_var(
        "GIT_SSH_COMMAND",
        ssh_command(&client_key, &empty_known_hosts, sshd.port),
    );
    let unverified = source(ssh_url, tmp.path().join("cache-unverified"));
    let err = unverified.remote_head().await.err().unwrap();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");

    std::env::remove_var("GIT_SSH_COMMAND");
}
