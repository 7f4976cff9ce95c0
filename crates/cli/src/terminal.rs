//! The user's terminal for `exec -it`: raw mode, its size, stdin and window changes forwarded.

use rswarm_api::local::v1 as pb;
use tokio::sync::mpsc;

/// Puts stdin in raw mode; restores the previous mode when dropped.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Rows and columns of the terminal on stdout (or stdin).
pub fn size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Copies stdin to the exec stream on a thread (stdin reads block), then half-closes.
pub fn forward_stdin(tx: mpsc::Sender<pb::ExecInput>) {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = pb::ExecInput {
                        input: Some(pb::exec_input::Input::Stdin(buf[..n].to_vec())),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.blocking_send(pb::ExecInput {
            input: Some(pb::exec_input::Input::StdinEof(true)),
        });
    });
}

/// Sends the terminal's new size on every SIGWINCH.
pub fn forward_resizes(tx: mpsc::Sender<pb::ExecInput>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some((rows, cols)) = size() {
                let msg = pb::ExecInput {
                    input: Some(pb::exec_input::Input::Resize(pb::TerminalSize {
                        rows: u32::from(rows),
                        cols: u32::from(cols),
                    })),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    });
}
