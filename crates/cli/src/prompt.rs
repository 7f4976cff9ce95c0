//! Docker's confirmation prompt, before commands that remove things (`network prune`,
//! `image prune`) unless `-f`.

use anyhow::Context;

/// Whether a prompt's answer is a yes: y or yes, in any case.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Docker's prompt: `warning`, then "Are you sure you want to continue? [y/N] " on stdout, and
/// one line from stdin; only y or yes (any case) goes on. No answer (end of input) is a no.
pub fn confirm(warning: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let mut stdout = std::io::stdout().lock();
    write!(
        stdout,
        "{warning}\nAre you sure you want to continue? [y/N] "
    )?;
    stdout.flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer from stdin")?;
    let yes = is_yes(&answer);
    if !yes {
        writeln!(stdout)?;
    }
    Ok(yes)
}

#[cfg(test)]
mod tests {
    use super::is_yes;

    #[test]
    fn only_y_or_yes_goes_on() {
        for a in ["y\n", "Y", "yes\n", " YES "] {
            assert!(is_yes(a), "{a:?}");
        }
        for a in ["", "\n", "n\n", "no", "yess", "ja"] {
            assert!(!is_yes(a), "{a:?}");
        }
    }
}
