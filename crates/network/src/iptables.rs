//! Running the `iptables` binary (IO). Every call waits for the xtables lock (`-w`).

use std::io::ErrorKind;

use tokio::process::Command;

use crate::error::NetworkError;
use crate::rules::{parse_listing, ListedRule, Placement, Rule, Table};

/// Seconds to wait for the xtables lock.
const LOCK_WAIT_SECS: &str = "60";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(args: &[String]) -> Result<Output, NetworkError> {
    tracing::trace!(?args, "iptables");
    // The child is forked from the calling thread, so it runs in that thread's network namespace.
    let out = Command::new("iptables")
        .arg("-w")
        .arg(LOCK_WAIT_SECS)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => NetworkError::IptablesMissing,
            _ => NetworkError::io("run iptables", e),
        })?;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn failed(args: &[String], out: &Output) -> NetworkError {
    NetworkError::Iptables {
        args: args.join(" "),
        status: match out.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        },
        stderr: out.stderr.clone(),
    }
}

async fn exec(args: Vec<String>) -> Result<(), NetworkError> {
    let out = run(&args).await?;
    if out.code == Some(0) {
        Ok(())
    } else {
        Err(failed(&args, &out))
    }
}

/// Whether `rule` exists (`iptables -C`).
pub(crate) async fn rule_exists(rule: &Rule) -> Result<bool, NetworkError> {
    let args = rule.args("-C");
    let out = run(&args).await?;
    match out.code {
        Some(0) => Ok(true),
        // 1: no such rule (or chain); a real problem resurfaces when we add it.
        Some(1) => Ok(false),
        _ => Err(failed(&args, &out)),
    }
}

/// Adds `rule` unless it already exists.
pub(crate) async fn ensure_rule(rule: &Rule, placement: Placement) -> Result<(), NetworkError> {
    if rule_exists(rule).await? {
        return Ok(());
    }
    tracing::debug!(table = rule.table.as_str(), chain = %rule.chain, spec = ?rule.spec, "adding iptables rule");
    match placement {
        Placement::Append => exec(rule.args("-A")).await,
        Placement::Top => exec(rule.insert_top_args()).await,
    }
}

/// Deletes `rule` if it exists.
pub(crate) async fn delete_rule(rule: &Rule) -> Result<(), NetworkError> {
    let args = rule.args("-D");
    let out = run(&args).await?;
    match out.code {
        Some(0) | Some(1) => Ok(()),
        _ => Err(failed(&args, &out)),
    }
}

/// Lists `chain`'s rules; `None` when the chain does not exist.
pub(crate) async fn list_chain(
    table: Table,
    chain: &str,
) -> Result<Option<Vec<ListedRule>>, NetworkError> {
    let args: Vec<String> = vec![
        "-t".into(),
        table.as_str().into(),
        "-S".into(),
        chain.into(),
    ];
    let out = run(&args).await?;
    match out.code {
        Some(0) => Ok(Some(parse_listing(&out.stdout, chain))),
        Some(1) => Ok(None),
        _ => Err(failed(&args, &out)),
    }
}

/// Creates `chain` unless it exists.
pub(crate) async fn ensure_chain(table: Table, chain: &str) -> Result<(), NetworkError> {
    if list_chain(table, chain).await?.is_some() {
        return Ok(());
    }
    let args: Vec<String> = vec![
        "-t".into(),
        table.as_str().into(),
        "-N".into(),
        chain.into(),
    ];
    let out = run(&args).await?;
    // Lost a race with another caller creating it: fine.
    if out.code == Some(0) || out.stderr.contains("already exists") {
        Ok(())
    } else {
        Err(failed(&args, &out))
    }
}

/// Flushes and deletes `chain` if it exists.
pub(crate) async fn delete_chain(table: Table, chain: &str) -> Result<(), NetworkError> {
    if list_chain(table, chain).await?.is_none() {
        return Ok(());
    }
    let t = table.as_str().to_string();
    exec(vec!["-t".into(), t.clone(), "-F".into(), chain.into()]).await?;
    exec(vec!["-t".into(), t, "-X".into(), chain.into()]).await
}

/// Deletes the rules of `chain` the predicate selects by comment. Rules that vanished meanwhile
/// are ignored.
pub(crate) async fn delete_matching(
    table: Table,
    chain: &str,
    mut select: impl FnMut(&ListedRule) -> bool,
) -> Result<usize, NetworkError> {
    let Some(listed) = list_chain(table, chain).await? else {
        return Ok(0);
    };
    let mut deleted = 0;
    for r in listed.iter().filter(|r| select(r)) {
        delete_rule(&Rule {
            table,
            chain: chain.to_string(),
            spec: r.spec.clone(),
        })
        .await?;
        deleted += 1;
    }
    Ok(deleted)
}
