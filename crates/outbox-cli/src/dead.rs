//! `outbox dead`: an operator's tools for dead letters (messages the relay gave up on)
//! and for parked keys: list and show them, replay them to the relay in write order,
//! purge them, and kill a failing head so that its key flows again.
//!
//! Every change goes through the `MessageStore` port (`replay_dead`, `delete_dead`,
//! `kill`), so it follows the same state machine as the relay, and a message whose
//! state changed meanwhile is skipped rather than overwritten.

use crate::admin::{self, Admin, Connection, Tables, confirm, parse_time, table_context, usage};
use crate::output::{
    cell, message_detail, message_summary, payload_text, print_json, print_table, text_time,
};
use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use outbox_domain::{ErrorText, MessageId, MessageStatus};
use outbox_ports::{ListFilter, MessageStore, StoredMessage};
use outbox_sea_orm::SeaOrmStore;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Options of `outbox dead`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeadArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    tables: Tables,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List dead messages, oldest first (table by table), as a table.
    List {
        #[command(flatten)]
        filters: Filters,
        /// At most this many messages.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Show one message whole: envelope, headers, delivery state, last error and the
    /// payload (pretty-printed when it is JSON). Works for a message in any status.
    Show {
        /// The message id.
        id: MessageId,
    },
    /// Send dead messages back to the relay with fresh attempts, oldest first, so that
    /// each key's messages are delivered in their original order. Either the given
    /// ids, or every dead message the filters select (after confirmation).
    Replay(Selection),
    /// Delete dead messages for good, after confirmation (type `yes`, or pass
    /// `--yes`). Either the given ids, or every dead message the filters select.
    Purge(Selection),
    /// Make a pending message dead, recording why: the way to unpark a key whose head
    /// keeps failing (see `outbox status --parked`). Replay it later if it should go
    /// out after all.
    Kill {
        /// The message id (a pending message, usually the head of a parked key).
        id: MessageId,
        /// Why (recorded as the message's last error).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

/// Which dead messages: each option that is given must match.
#[derive(Debug, clap::Args)]
struct Filters {
    /// Only messages of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only messages of this event type.
    #[arg(long, value_name = "TYPE")]
    event_type: Option<String>,
    /// Only messages of this partition key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Only messages created at or after this time (RFC 3339, e.g. 2027-01-31T12:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only messages created before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
}

impl Filters {
    /// The dead messages these filters select, at most `limit`.
    fn list_filter(&self, limit: usize) -> anyhow::Result<ListFilter> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            return Err(usage("--since must be earlier than --until"));
        }
        let mut f = ListFilter::status(MessageStatus::Dead, limit);
        if let Some(s) = &self.service {
            f = f.with_service(s.clone());
        }
        if let Some(t) = &self.event_type {
            f = f.with_event_type(t.clone());
        }
        if let Some(k) = &self.key {
            f = f.with_partition_key(k.clone());
        }
        if let Some(at) = self.since {
            f = f.with_created_from(at);
        }
        if let Some(at) = self.until {
            f = f.with_created_before(at);
        }
        Ok(f)
    }
}

/// The messages `replay` or `purge` act on.
#[derive(Debug, clap::Args)]
struct Selection {
    /// The ids of the dead messages (instead of filters). Every one must exist and be
    /// dead, or nothing is done.
    #[arg(value_name = "ID", conflicts_with_all = ["service", "event_type", "key", "since", "until", "limit"])]
    ids: Vec<MessageId>,
    #[command(flatten)]
    filters: Filters,
    /// At most this many messages (the oldest), instead of every one that matches.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Messages per store call (and per transaction).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

/// Messages read per page while selecting.
const PAGE: usize = 500;

pub(crate) async fn run(args: DeadArgs) -> anyhow::Result<ExitCode> {
    admin::finish(dead(args).await)
}

async fn dead(args: DeadArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be checked without the database is, first.
    let tables = args.tables.resolve()?;
    match &args.action {
        Action::List { filters, .. } => {
            filters.list_filter(1)?;
        }
        Action::Replay(s) | Action::Purge(s) => {
            s.filters.list_filter(1)?;
        }
        Action::Kill { reason, .. } if reason.trim().is_empty() => {
            return Err(usage("--reason must say why the message is killed"));
        }
        Action::Show { .. } | Action::Kill { .. } => {}
    }
    let admin = Admin::open(&args.connection, "dead").await?;
    let stores = admin.stores(&tables)?;
    match args.action {
        Action::List { filters, limit } => list(&admin, &stores, &filters, limit as usize).await,
        Action::Show { id } => show(&admin, &stores, id).await,
        Action::Replay(selection) => apply(&admin, &stores, selection, Op::Replay).await,
        Action::Purge(selection) => apply(&admin, &stores, selection, Op::Purge).await,
        Action::Kill { id, reason } => kill(&admin, &stores, id, &reason).await,
    }
}

async fn list(
    admin: &Admin,
    stores: &[SeaOrmStore],
    filters: &Filters,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let mut found: Vec<(String, StoredMessage)> = Vec::new();
    for store in stores {
        let left = limit - found.len();
        if left == 0 {
            break;
        }
        let page = store
            .list(&filters.list_filter(left)?)
            .await
            .with_context(|| table_context("read", store))?;
        let table = store.config().table.to_string();
        found.extend(page.into_iter().map(|m| (table.clone(), m)));
    }
    let limit_reached = found.len() == limit;
    if admin.json {
        print_json(&json!({
            "database": admin.database,
            "messages": found.iter().map(|(t, m)| message_summary(t, m)).collect::<Vec<_>>(),
            "limit": limit,
            "limit_reached": limit_reached,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    if found.is_empty() {
        println!("no dead messages match");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|(table, m)| {
            let d = &m.delivery;
            vec![
                m.message.id.to_string(),
                table.clone(),
                m.seq.to_string(),
                m.message.service.clone(),
                m.message.event_type.clone(),
                m.message.partition_key.clone(),
                text_time(Some(m.message.created_at)),
                format!("{}/{}", d.attempts, d.max_attempts),
                cell(d.last_error.as_ref().map_or("", |e| e.as_str())),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "TABLE",
            "SEQ",
            "SERVICE",
            "EVENT_TYPE",
            "KEY",
            "CREATED",
            "ATTEMPTS",
            "LAST_ERROR",
        ],
        &rows,
    );
    println!();
    if limit_reached {
        println!(
            "{} dead message(s), the --limit; there may be more",
            found.len()
        );
    } else {
        println!("{} dead message(s)", found.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// The message `id` and the index of the store holding it, or an error naming the
/// tables searched.
async fn find(stores: &[SeaOrmStore], id: MessageId) -> anyhow::Result<(usize, StoredMessage)> {
    for (n, store) in stores.iter().enumerate() {
        if let Some(m) = store
            .get(id)
            .await
            .with_context(|| table_context("read", store))?
        {
            return Ok((n, m));
        }
    }
    let tables: Vec<&str> = stores.iter().map(|s| s.config().table.as_str()).collect();
    Err(anyhow!("no message {id} in {}", tables.join(", ")))
}

async fn show(admin: &Admin, stores: &[SeaOrmStore], id: MessageId) -> anyhow::Result<ExitCode> {
    let (n, m) = find(stores, id).await?;
    let table = stores[n].config().table.as_str();
    if admin.json {
        let mut doc = message_detail(table, &m);
        doc["database"] = Value::String(admin.database.clone());
        print_json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    let msg = &m.message;
    let d = &m.delivery;
    println!();
    println!("message {}  (table {table}, seq {})", msg.id, m.seq);
    let field = |name: &str, value: &str| println!("  {name:<16}{value}");
    field("service", &msg.service);
    field("event type", &msg.event_type);
    field("topic", &msg.topic);
    field("partition key", &msg.partition_key);
    field("content type", msg.payload.content_type());
    field("schema version", &msg.schema_version.to_string());
    field("created at", &text_time(Some(msg.created_at)));
    field("occurred at", &text_time(Some(msg.occurred_at)));
    if let Some(t) = &msg.trace_context {
        field("traceparent", &t.traceparent);
        if let Some(state) = &t.tracestate {
            field("tracestate", state);
        }
    }
    if msg.headers.is_empty() {
        field("headers", "-");
    } else {
        println!("  headers");
        for (name, value) in &msg.headers {
            println!("    {name}: {value}");
        }
    }
    println!("delivery");
    field("status", d.status.as_str());
    field("attempts", &format!("{}/{}", d.attempts, d.max_attempts));
    field("next attempt", &text_time(Some(d.next_attempt_at)));
    match &d.lease {
        Some(l) => field(
            "lease",
            &format!("{} until {}", l.owner, text_time(Some(l.expires_at))),
        ),
        None => field("lease", "-"),
    }
    field("published at", &text_time(d.published_at));
    field("consumed at", &text_time(d.consumed_at));
    field(
        "last error",
        d.last_error.as_ref().map_or("-", |e| e.as_str()),
    );
    println!("payload");
    println!("{}", payload_text(&msg.payload));
    Ok(ExitCode::SUCCESS)
}

async fn kill(
    admin: &Admin,
    stores: &[SeaOrmStore],
    id: MessageId,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    let (n, m) = find(stores, id).await?;
    let store = &stores[n];
    store
        .kill(id, ErrorText::new(reason), Utc::now())
        .await
        .with_context(|| format!("cannot kill message {id}"))?;
    let table = store.config().table.as_str();
    if admin.json {
        print_json(&json!({
            "database": admin.database,
            "action": "kill",
            "table": table,
            "id": id.to_string(),
            "service": m.message.service,
            "partition_key": m.message.partition_key,
            "status": MessageStatus::Dead.as_str(),
            "reason": reason,
        }))?;
    } else {
        println!(
            "killed message {id} (table {table}, service {}, key {}): it is dead now, and the \
             rest of its key flows; `outbox dead replay {id}` sends it again",
            m.message.service, m.message.partition_key
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Replay,
    Purge,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Replay => "replay",
            Op::Purge => "purge",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Op::Replay => "replayed",
            Op::Purge => "purged",
        }
    }
}

/// One selected dead message: its store and position.
#[derive(Debug, Clone, Copy)]
struct Picked {
    store: usize,
    seq: u64,
    id: MessageId,
}

/// The dead messages `selection` names, in write order per table: the given ids (each
/// must exist and be dead), or every match of the filters up to `--limit`.
async fn select(stores: &[SeaOrmStore], selection: &Selection) -> anyhow::Result<Vec<Picked>> {
    let mut picked = Vec::new();
    if !selection.ids.is_empty() {
        let mut seen = HashSet::new();
        for &id in &selection.ids {
            if !seen.insert(id) {
                continue;
            }
            let (store, m) = find(stores, id).await?;
            if m.delivery.status != MessageStatus::Dead {
                return Err(anyhow!(
                    "message {id} is {}, not dead; nothing was done",
                    m.delivery.status
                ));
            }
            picked.push(Picked {
                store,
                seq: m.seq,
                id,
            });
        }
        picked.sort_by_key(|p| (p.store, p.seq));
        return Ok(picked);
    }
    let limit = selection.limit.map_or(usize::MAX, |l| l as usize);
    for (n, store) in stores.iter().enumerate() {
        let mut after = None;
        loop {
            let left = limit - picked.len();
            if left == 0 {
                return Ok(picked);
            }
            let mut filter = selection.filters.list_filter(left.min(PAGE))?;
            if let Some(seq) = after {
                filter = filter.with_after_seq(seq);
            }
            let page = store
                .list(&filter)
                .await
                .with_context(|| table_context("read", store))?;
            let full = page.len() == filter.limit;
            after = page.last().map(|m| m.seq);
            picked.extend(page.iter().map(|m| Picked {
                store: n,
                seq: m.seq,
                id: m.message.id,
            }));
            if !full {
                break;
            }
        }
    }
    Ok(picked)
}

/// `replay` or `purge`: select, confirm, then act in batches, oldest first.
async fn apply(
    admin: &Admin,
    stores: &[SeaOrmStore],
    selection: Selection,
    op: Op,
) -> anyhow::Result<ExitCode> {
    let picked = select(stores, &selection).await?;
    let matched = picked.len();
    if matched > 0 {
        let by_ids = !selection.ids.is_empty();
        // Replaying named messages is what the operator asked for; replaying by
        // filter, or deleting anything, is confirmed first.
        if op == Op::Purge || !by_ids {
            confirm(
                &format!("{} {matched} dead message(s)", op.verb()),
                selection.yes,
            )?;
        }
    }
    let batch = selection.batch_size as usize;
    let progress = if matched > batch && !admin.json && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(matched as u64), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(op.done());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut changed = 0u64;
    let mut done = 0usize;
    // `picked` is sorted by store, then position: each chunk stays within one store.
    for (n, store) in stores.iter().enumerate() {
        let ids: Vec<MessageId> = picked
            .iter()
            .filter(|p| p.store == n)
            .map(|p| p.id)
            .collect();
        for chunk in ids.chunks(batch) {
            let result = match op {
                Op::Replay => store.replay_dead(chunk, Utc::now()).await,
                Op::Purge => store.delete_dead(chunk).await,
            };
            let n = result.with_context(|| {
                format!(
                    "{} {changed} of {matched} dead message(s), then failed on the table {}",
                    op.done(),
                    store.config().table
                )
            })?;
            changed += n;
            done += chunk.len();
            progress.set_position(done as u64);
        }
    }
    progress.finish_and_clear();
    if admin.json {
        let messages: Vec<Value> = picked
            .iter()
            .map(|p| {
                json!({
                    "table": stores[p.store].config().table.as_str(),
                    "seq": p.seq,
                    "id": p.id.to_string(),
                })
            })
            .collect();
        let mut doc = json!({
            "database": admin.database,
            "action": op.verb(),
            "matched": matched,
            "messages": messages,
        });
        doc[op.done()] = json!(changed);
        print_json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    if matched == 0 {
        println!("no dead messages match; nothing to {}", op.verb());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} {changed} dead message(s)", op.done());
    if (changed as usize) < matched {
        println!(
            "{} of the {matched} selected were no longer dead (replayed or purged meanwhile) and \
             were left alone",
            matched - changed as usize
        );
    }
    Ok(ExitCode::SUCCESS)
}
