//! A thin async driver for runc's command line.
//!
//! Every call passes `--root` (so several rswarm agents never see each other's containers) and
//! `--log-format json`, so that on failure runc's own error message can be taken from its stderr
//! and put into [`RuncError::Failed`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

/// Errors from running runc.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The runc binary does not exist.
    #[error("runc not found at {path}: install the Debian package `runc` or pass --runtime PATH")]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// runc could not be started.
    #[error("cannot run {path}: {source} (check that it is an executable runc binary)")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// runc ran and failed; `message` is runc's own error.
    #[error("runc {command} failed: {message}")]
    Failed {
        /// The subcommand and container id, e.g. `start web-1`.
        command: String,
        /// runc's last error message (or its stderr / exit status).
        message: String,
    },
    /// runc printed something that is not the expected JSON.
    #[error("runc {command} printed unexpected output ({source}); is {binary} really runc?")]
    BadOutput {
        /// The subcommand.
        command: String,
        /// The binary.
        binary: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A signal name or number runc would not accept.
    #[error("invalid signal {0:?}: use a name such as TERM, SIGKILL or a number")]
    InvalidSignal(String),
}

/// A container as `runc state` / `runc list` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncState {
    /// The container id.
    pub id: String,
    /// The init process's pid (0 once stopped).
    pub pid: i32,
    /// `created`, `running`, `stopped` or `paused`.
    pub status: String,
    /// The bundle directory.
    pub bundle: PathBuf,
}

/// The runc binary and the state root it is used with.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// A driver for `binary` (e.g. `/usr/sbin/runc`) with `--root root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Runc {
            binary: binary.into(),
            root: root.into(),
        }
    }

    /// The runc binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// runc's `--root` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log-format")
            .arg("json")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs runc with `args`; returns its stdout on success.
    async fn run(&self, what: &str, args: &[&OsStr]) -> Result<Vec<u8>, RuncError> {
        let mut cmd = self.command();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = cmd.output().await.map_err(|e| self.spawn_error(e))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuncError::Failed {
                command: what.to_string(),
                message: error_message(&out.stderr)
                    .unwrap_or_else(|| format!("runc exited with {}", out.status)),
            })
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> RuncError {
        if source.kind() == std::io::ErrorKind::NotFound {
            RuncError::NotFound {
                path: self.binary.clone(),
            }
        } else {
            RuncError::Spawn {
                path: self.binary.clone(),
                source,
            }
        }
    }

    /// Checks that runc runs; returns its version line (`runc version 1.1.5`).
    pub async fn check(&self) -> Result<String, RuncError> {
        let out = tokio::process::Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await
            .map_err(|e| self.spawn_error(e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or("").trim().to_string();
        if !out.status.success() || !line.contains("version") {
            return Err(RuncError::Failed {
                command: "--version".into(),
                message: format!("exited with {} and printed {line:?}", out.status),
            });
        }
        Ok(line)
    }

    /// `runc start ID`: runs the user process of a created container.
    pub async fn start(&self, id: &str) -> Result<(), RuncError> {
        self.run(&format!("start {id}"), &["start".as_ref(), id.as_ref()])
            .await
            .map(drop)
    }

    /// `runc kill [--all] ID SIGNAL`. `signal` is a name with or without `SIG` (`TERM`,
    /// `SIGKILL`) or a number.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuncError> {
        let signal = normalize_signal(signal)?;
        let mut args: Vec<&OsStr> = vec!["kill".as_ref()];
        if all {
            args.push("--all".as_ref());
        }
        args.push(id.as_ref());
        args.push(signal.as_ref());
        self.run(&format!("kill {id} {signal}"), &args)
            .await
            .map(drop)
    }

    /// `runc delete [--force] ID`. Succeeds if the container does not exist.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut args: Vec<&OsStr> = vec!["delete".as_ref()];
        if force {
            args.push("--force".as_ref());
        }
        args.push(id.as_ref());
        match self.run(&format!("delete {id}"), &args).await {
            Err(RuncError::Failed { message, .. }) if is_not_exist(&message) => Ok(()),
            r => r.map(drop),
        }
    }

    /// `runc state ID`; `None` if runc does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuncState>, RuncError> {
        let what = format!("state {id}");
        match self.run(&what, &["state".as_ref(), id.as_ref()]).await {
            Ok(out) => {
                serde_json::from_slice(&out)
                    .map(Some)
                    .map_err(|source| RuncError::BadOutput {
                        command: what,
                        binary: self.binary.clone(),
                        source,
                    })
            }
            Err(RuncError::Failed { message, .. }) if is_not_exist(&message) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `runc list --format json`: every container under this root.
    pub async fn list(&self) -> Result<Vec<RuncState>, RuncError> {
        let out = self
            .run(
                "list",
                &["list".as_ref(), "--format".as_ref(), "json".as_ref()],
            )
            .await?;
        let list: Option<Vec<RuncState>> =
            serde_json::from_slice(&out).map_err(|source| RuncError::BadOutput {
                command: "list".into(),
                binary: self.binary.clone(),
                source,
            })?;
        Ok(list.unwrap_or_default())
    }

    /// A `runc exec` command for the process described by `process_json_path` (an OCI `process`
    /// object). The caller sets stdio and spawns it. With `detach`, runc exits once the process
    /// has started (and writes its pid to `pid_file`); with `tty`, runc sends the pty master to
    /// `console_socket`.
    pub fn exec_command(
        &self,
        id: &str,
        process_json_path: &Path,
        tty: bool,
        console_socket: Option<&Path>,
        detach: bool,
        pid_file: Option<&Path>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("exec");
        if tty {
            cmd.arg("--tty");
        }
        if let Some(sock) = console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        if detach {
            cmd.arg("--detach");
        }
        if let Some(p) = pid_file {
            cmd.arg("--pid-file").arg(p);
        }
        cmd.arg("--process").arg(process_json_path).arg(id);
        cmd
    }
}

fn is_not_exist(message: &str) -> bool {
    message.contains("does not exist") || message.contains("not exist")
}

/// Accepts `TERM`, `SIGTERM`, `sigterm`, `15`; returns what runc is given.
fn normalize_signal(signal: &str) -> Result<String, RuncError> {
    let s = signal.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u8>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n.to_string()),
            _ => Err(RuncError::InvalidSignal(signal.to_string())),
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-')
    {
        return Err(RuncError::InvalidSignal(signal.to_string()));
    }
    Ok(format!("SIG{name}"))
}

/// The `msg` of the last `"level":"error"` (or fatal) record in runc's JSON log output; falls
/// back to the last non-empty non-JSON line.
pub fn error_message(log: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Rec {
        level: Option<String>,
        msg: Option<String>,
    }
    let text = String::from_utf8_lossy(log);
    let mut last_error = None;
    let mut last_plain = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Rec>(line) {
            Ok(Rec {
                level: Some(level),
                msg: Some(msg),
            }) if level == "error" || level == "fatal" => last_error = Some(msg),
            Ok(_) => {}
            Err(_) => last_plain = Some(line.to_string()),
        }
    }
    last_error.or(last_plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_takes_the_last_error() {
        let log = br#"{"level":"info","msg":"hello","time":"x"}
{"level":"error","msg":"first","time":"x"}
{"level":"warning","msg":"w","time":"x"}
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH","time":"x"}
"#;
        assert_eq!(
            error_message(log).unwrap(),
            "container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(error_message(b"plain failure\n").unwrap(), "plain failure");
        assert_eq!(error_message(b""), None);
    }

    #[test]
    fn signals() {
        assert_eq!(normalize_signal("TERM").unwrap(), "SIGTERM");
        assert_eq!(normalize_signal("sigkill").unwrap(), "SIGKILL");
        assert_eq!(normalize_signal("SIGRTMIN+3").unwrap(), "SIGRTMIN+3");
        assert_eq!(normalize_signal("9").unwrap(), "9");
        assert!(normalize_signal("0").is_err());
        assert!(normalize_signal("").is_err());
        assert!(normalize_signal("TERM; rm").is_err());
    }

    #[tokio::test]
    async fn missing_binary_says_what_to_install() {
        let r = Runc::new("/nonexistent/runc", "/tmp/none");
        let err = r.check().await.unwrap_err();
        assert!(matches!(err, RuncError::NotFound { .. }));
        assert!(err
            .to_string()
            .contains("install the Debian package `runc`"));
    }

    #[tokio::test]
    async fn unknown_container_is_none_and_delete_is_ok() {
        let runc = Path::new("/usr/sbin/runc");
        if !runc.exists() {
            eprintln!("skipping: no runc at {}", runc.display());
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let r = Runc::new(runc, root.path());
        assert!(r.check().await.unwrap().starts_with("runc version"));
        assert_eq!(r.state("nope").await.unwrap(), None);
        r.delete("nope", false).await.unwrap();
        r.delete("nope", true).await.unwrap();
        assert!(r.list().await.unwrap().is_empty());
        let err = r.start("nope").await.unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
