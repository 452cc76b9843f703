//! Administration from the command line, against the configured store:
//! machine tokens, local users, and the audit trail's verification. These
//! are how the first admin token is made on a fresh installation.

use std::io::BufRead;

use anyhow::{bail, Context};
use clap::Subcommand;
use firebreak_domain::access::{Role, Scope};
use firebreak_domain::duration::Dur;
use firebreak_store::credentials;
use firebreak_store::{NewAudit, NewUser, StoreError};
use serde_json::json;

use crate::config::Config;

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  firebreak tokens create --name alertmanager --scope ingest
  firebreak tokens create --name checkout-sdk --scope flags:read --expires-in 90d
  firebreak tokens list
  firebreak tokens revoke alertmanager")]
pub enum TokensCommand {
    /// Creates a token and prints it (the only time it is shown).
    Create {
        /// What holds it, e.g. alertmanager, checkout-sdk.
        #[arg(long)]
        name: String,
        /// ingest, flags:read, read, edit, operate, admin (repeat for several).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Valid for this long, e.g. 90d; default: until revoked.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Lists tokens (never their secrets).
    List,
    /// Revokes a token by id or name.
    Revoke {
        /// The token's id (from `list`) or name.
        token: String,
    },
}

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  firebreak users create --name ana --role operator      # then type the password
  FIREBREAK_USER_PASSWORD='…' firebreak users create --name ana --role admin
  firebreak users list
  firebreak users disable ana
A running Firebreak picks up its first user or token within a second.")]
pub enum UsersCommand {
    /// Creates a user; the password is read from FIREBREAK_USER_PASSWORD or the first line of stdin.
    Create {
        /// The name they sign in with.
        #[arg(long)]
        name: String,
        /// viewer, editor, operator or admin.
        #[arg(long)]
        role: String,
    },
    /// Lists users: name, role, whether disabled.
    List,
    /// Disables a user and ends their sessions.
    Disable {
        /// The user's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  firebreak audit verify
  firebreak audit verify --expect-head 1042:5f1c…")]
pub enum AuditCommand {
    /// Recomputes the hash chain (keyed with the audit key) and checks that the
    /// head recorded outside the database (the witness file, or
    /// --expect-head) is still there unchanged; exits 1 naming the first
    /// row that does not match.
    Verify {
        /// A head taken from elsewhere (the log's `audit trail head` line,
        /// a copy of the witness): `ID:HASH`.
        #[arg(long)]
        expect_head: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  firebreak flags stale --days 30
  firebreak flags stale --days 14 --json")]
pub enum FlagsCommand {
    /// Flags ready to remove from code: fully rolled out, or not evaluated, for `--days` days.
    Stale {
        /// How long unchanged (or not evaluated) counts as stale.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  firebreak dead-letters list
  firebreak dead-letters replay --id 3f2a…
  firebreak dead-letters replay --all")]
pub enum DeadLettersCommand {
    /// Lists dead letters grouped by message: id, count, reason, first and last seen.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Puts dead letters back on their lane (fix the cause first).
    Replay {
        /// A dead letter's id from `list` (repeat for several).
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

const CLI: &str = "cli";

pub async fn dead_letters(config: &Config, command: &DeadLettersCommand) -> anyhow::Result<()> {
    let bus = crate::open_bus(config).await?;
    let result = match command {
        DeadLettersCommand::List { json: as_json } => {
            let (letters, more) = bus
                .dead_letters()
                .await
                .context("reading the dead letters")?;
            let groups = firebreak_engine::dead_letters::summary(&letters);
            for g in &groups {
                if *as_json {
                    println!("{g}");
                } else {
                    let text = |k: &str| g[k].as_str().unwrap_or("-").to_string();
                    println!(
                        "{}  {:>5}x  {:<24} {:<6} first {}  last {}  {}",
                        text("id"),
                        g["count"],
                        text("routing_key"),
                        text("lane"),
                        text("first_seen"),
                        text("last_seen"),
                        text("reason")
                    );
                }
            }
            if !*as_json {
                if groups.is_empty() {
                    println!("no dead letters ({} bus)", bus.backend());
                } else if more {
                    println!(
                        "(more than {} messages wait: replay or clear some to see the rest)",
                        letters.len()
                    );
                }
            }
            Ok(())
        }
        DeadLettersCommand::Replay { ids, all } => {
            let ids = (!*all).then(|| ids.clone());
            // No `?`: the bus is closed below whatever happens.
            with_store(config, async |store| {
                firebreak_engine::dead_letters::replay(bus.as_ref(), store, CLI, ids)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .await
            .map(|n| println!("replayed {n} dead letter(s) onto their lanes"))
        }
    };
    bus.close().await;
    result
}

pub async fn flags(config: &Config, command: &FlagsCommand) -> anyhow::Result<()> {
    let FlagsCommand::Stale {
        days,
        json: as_json,
    } = command;
    if !(1..=3650).contains(days) {
        bail!("--days must be 1 to 3650");
    }
    let flags = with_store(config, async |store| Ok(store.list_flags().await?)).await?;
    let now = chrono::Utc::now();
    let mut any = false;
    for f in flags {
        let reasons = f.stale_reasons(now, *days);
        if reasons.is_empty() {
            continue;
        }
        any = true;
        let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| "never".into())
        };
        if *as_json {
            println!(
                "{}",
                json!({"key": f.key, "reasons": reasons, "owner": f.owner,
                       "last_changed_at": f.updated_at, "last_evaluated_at": f.last_evaluated_at})
            );
        } else {
            println!(
                "{:<40} {:<34} owner {:<16} changed {} evaluated {}",
                f.key,
                reasons.join(","),
                f.owner.as_deref().unwrap_or("-"),
                when(Some(f.updated_at)),
                when(f.last_evaluated_at)
            );
        }
    }
    if !any && !*as_json {
        println!("no stale flags (fully rolled out or not evaluated for {days} days)");
    }
    Ok(())
}

/// Opens the store, runs `work` on it and closes it, whether or not `work`
/// succeeded.
async fn with_store<T>(
    config: &Config,
    work: impl AsyncFnOnce(&dyn firebreak_store::Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let store = crate::open_store(config).await?;
    let result = work(store.as_ref()).await;
    store.close().await;
    result
}

pub async fn tokens(config: &Config, command: &TokensCommand) -> anyhow::Result<()> {
    with_store(config, async |store| {
        match command {
            TokensCommand::Create {
                name,
                scopes,
                expires_in,
            } => {
                credentials::check_token_name(name).map_err(anyhow::Error::msg)?;
                let scopes = scopes
                    .iter()
                    .map(|s| Scope::parse(s).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let expires_at = expires_in
                    .as_deref()
                    .map(|d| Dur::parse(d).map(|d| chrono::Utc::now() + d.0))
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let (shown, new) = credentials::new_token(name, scopes, CLI, expires_at);
                let audit = NewAudit::by(
                    CLI,
                    "token_created",
                    json!({"token": new.id, "name": new.name, "scopes": new.scopes}),
                );
                match store.create_token(&new, &audit).await {
                    Ok(_) => {}
                    Err(StoreError::Conflict(_)) => {
                        bail!("a token named {name:?} exists: revoke it first (firebreak tokens revoke {name})")
                    }
                    Err(e) => return Err(e.into()),
                }
                eprintln!("token {name} ({}) created; it is shown only now:", new.id);
                println!("{shown}");
            }
            TokensCommand::List => {
                for t in store.list_tokens().await? {
                    println!(
                        "{}  {:<24} {:<32} created {} by {}{}{}",
                        t.id,
                        t.name,
                        t.scopes
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        t.created_at.format("%Y-%m-%d"),
                        t.created_by,
                        t.expires_at
                            .map(|e| format!(", expires {}", e.format("%Y-%m-%d")))
                            .unwrap_or_default(),
                        t.revoked_at.map_or("", |_| ", REVOKED")
                    );
                }
            }
            TokensCommand::Revoke { token } => {
                let audit = NewAudit::by(CLI, "token_revoked", json!({"token": token}));
                if !store.revoke_token(token, &audit).await? {
                    bail!("no active token {token:?}");
                }
                println!("revoked {token} (processes that verified it stop accepting it within 30 s)");
            }
        }
        Ok(())
    })
    .await
}

pub async fn users(config: &Config, command: &UsersCommand) -> anyhow::Result<()> {
    with_store(config, async |store| {
        match command {
            UsersCommand::Create { name, role } => {
                let role = Role::parse(role).map_err(anyhow::Error::msg)?;
                let password = match std::env::var("FIREBREAK_USER_PASSWORD") {
                    Ok(p) if !p.is_empty() => p,
                    _ => {
                        eprintln!("password for {name} (one line on stdin):");
                        let mut line = String::new();
                        std::io::stdin()
                            .lock()
                            .read_line(&mut line)
                            .context("reading the password")?;
                        line.trim_end_matches(['\r', '\n']).to_string()
                    }
                };
                credentials::check_password(&password, name)
                    .map_err(|e| anyhow::anyhow!("the password {e}"))?;
                let hash = credentials::hash_password(&password).map_err(anyhow::Error::msg)?;
                let audit =
                    NewAudit::by(CLI, "user_created", json!({"username": name, "role": role}));
                let user = NewUser {
                    username: name,
                    password_hash: &hash,
                    role,
                };
                match store.create_user(&user, &audit).await {
                    Ok(u) => println!("user {} ({}) created", u.username, u.role),
                    Err(StoreError::Conflict(_)) => bail!("a user named {name:?} exists"),
                    Err(e) => return Err(e.into()),
                }
            }
            UsersCommand::List => {
                for u in store.list_users().await? {
                    println!(
                        "{:<24} {:<9} created {} by {}{}",
                        u.username,
                        u.role,
                        u.created_at.format("%Y-%m-%d"),
                        u.created_by,
                        u.disabled_at.map_or("", |_| ", DISABLED")
                    );
                }
            }
            UsersCommand::Disable { name } => {
                let audit = NewAudit::by(CLI, "user_disabled", json!({"username": name}));
                if !store.disable_user(name, &audit).await? {
                    bail!("no enabled user {name:?}");
                }
                println!("disabled {name}");
            }
        }
        Ok(())
    })
    .await
}

pub async fn audit(config: &Config, command: &AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify { expect_head } = command;
    let expected = expect_head
        .as_deref()
        .map(crate::audit::Head::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--expect-head: {e}"))?;
    let witnessed = crate::audit::last_witnessed(&config.audit_witness)?;
    let (check, heads) = with_store(config, async |store| {
        let check = store.verify_audit().await?;
        let mut heads = Vec::new();
        for (what, head) in [("--expect-head", expected), ("the witness", witnessed)] {
            if let Some(head) = head {
                heads.push((what, crate::audit::check_head(store, &head).await?));
            }
        }
        Ok((check, heads))
    })
    .await?;
    if check.before_chain > 0 {
        println!(
            "{} rows were written before the hash chain began (by an older version)",
            check.before_chain
        );
    }
    if let Some((id, why)) = check.broken {
        bail!(
            "audit trail broken at row {id}: {why} ({} rows before it verified)",
            check.verified
        );
    }
    for (what, result) in &heads {
        if let Err(why) = result {
            bail!("audit trail does not match {what}: {why}");
        }
    }
    println!(
        "audit trail intact: {} rows verified, {} of them keyed{}",
        check.verified,
        check.keyed,
        match &check.head {
            Some((id, hash)) => format!("; head {id}:{hash}"),
            None => String::new(),
        }
    );
    if heads.is_empty() {
        println!(
            "no head recorded outside the database was checked (no witness at {}): a removed tail cannot be seen without one",
            config.audit_witness.display()
        );
    }
    Ok(())
}
