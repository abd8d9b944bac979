//! How the admin commands print: aligned text tables, times and ages for people, and
//! one JSON document for machines (`--json`), with stable field names.

use chrono::{DateTime, SecondsFormat, Utc};
use outbox_domain::Payload;
use outbox_ports::StoredMessage;
use serde_json::{Value, json};

/// The longest error text a table cell shows in full.
const MAX_CELL_CHARS: usize = 80;

/// Prints `document` on stdout as the command's only output.
pub(crate) fn print_json(document: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(document)?);
    Ok(())
}

/// A time in JSON: RFC 3339 in UTC, with as many fractional digits as it has.
pub(crate) fn json_time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    })
}

/// A time for people: RFC 3339 to the second, or `-`.
pub(crate) fn text_time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// A duration for people, in its two largest units: `42s`, `3m07s`, `5h02m`, `2d03h`.
pub(crate) fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Text on one line, cut to [`MAX_CELL_CHARS`] with an ellipsis.
pub(crate) fn cell(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_CELL_CHARS {
        let cut: String = text.chars().take(MAX_CELL_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Prints a table: the header, then one line per row, columns aligned with two spaces
/// between them; the last column is not padded.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        let cells: Vec<&str> = cells.collect();
        for (n, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if n + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{out}");
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// One message in a listing: where it is, what it is, how its delivery went.
pub(crate) fn message_summary(table: &str, m: &StoredMessage) -> Value {
    let d = &m.delivery;
    json!({
        "table": table,
        "seq": m.seq,
        "id": m.message.id.to_string(),
        "service": m.message.service,
        "event_type": m.message.event_type,
        "topic": m.message.topic,
        "partition_key": m.message.partition_key,
        "created_at": json_time(Some(m.message.created_at)),
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "max_attempts": d.max_attempts,
        "next_attempt_at": json_time(Some(d.next_attempt_at)),
        "last_error": d.last_error.as_ref().map(|e| e.as_str()),
    })
}

/// One message whole: the envelope, its payload and its delivery state.
pub(crate) fn message_detail(table: &str, m: &StoredMessage) -> Value {
    let msg = &m.message;
    let d = &m.delivery;
    json!({
        "table": table,
        "seq": m.seq,
        "message": {
            "id": msg.id.to_string(),
            "service": msg.service,
            "event_type": msg.event_type,
            "topic": msg.topic,
            "partition_key": msg.partition_key,
            "content_type": msg.payload.content_type(),
            "schema_version": msg.schema_version,
            "created_at": json_time(Some(msg.created_at)),
            "occurred_at": json_time(Some(msg.occurred_at)),
            "headers": msg.headers,
            "trace_context": msg.trace_context.as_ref().map(|t| json!({
                "traceparent": t.traceparent,
                "tracestate": t.tracestate,
            })),
            "payload": payload_json(&msg.payload),
        },
        "delivery": {
            "status": d.status.as_str(),
            "attempts": d.attempts,
            "max_attempts": d.max_attempts,
            "next_attempt_at": json_time(Some(d.next_attempt_at)),
            "lease": d.lease.as_ref().map(|l| json!({
                "owner": l.owner,
                "expires_at": json_time(Some(l.expires_at)),
            })),
            "last_error": d.last_error.as_ref().map(|e| e.as_str()),
            "published_at": json_time(d.published_at),
            "consumed_at": json_time(d.consumed_at),
        },
    })
}

/// A payload in JSON: `{"kind": "json", "value": …}` for JSON, `{"kind": "bytes",
/// "size": n, "text": "…" or null, "hex": "…"}` otherwise (`text` when the bytes are
/// UTF-8).
fn payload_json(payload: &Payload) -> Value {
    match payload {
        Payload::Json(v) => json!({ "kind": "json", "value": v }),
        Payload::Bytes { data, .. } => json!({
            "kind": "bytes",
            "size": data.len(),
            "text": std::str::from_utf8(data).ok(),
            "hex": hex(data),
        }),
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A payload for people: pretty-printed when it is JSON (or bytes that parse as JSON),
/// the text when it is UTF-8, else a hex dump.
pub(crate) fn payload_text(payload: &Payload) -> String {
    match payload {
        Payload::Json(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
        Payload::Bytes { data, .. } => {
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                return serde_json::to_string_pretty(&v).unwrap_or_default();
            }
            match std::str::from_utf8(data) {
                Ok(text) => text.to_owned(),
                Err(_) => data.chunks(32).map(hex).collect::<Vec<_>>().join("\n"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_two_units() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(42), "42s");
        assert_eq!(age(187), "3m07s");
        assert_eq!(age(5 * 3600 + 120), "5h02m");
        assert_eq!(age(2 * 86_400 + 3 * 3600), "2d03h");
    }

    #[test]
    fn payloads_print_readably() {
        let json = Payload::Json(json!({"order": 42}));
        assert_eq!(payload_text(&json), "{\n  \"order\": 42\n}");
        let text = Payload::from_bytes("text/plain", b"hello".to_vec());
        assert_eq!(payload_text(&text), "hello");
        let binary = Payload::from_bytes("application/octet-stream", vec![0xff, 0x00]);
        assert_eq!(payload_text(&binary), "ff00");
        assert_eq!(payload_json(&binary)["hex"], "ff00");
        assert_eq!(payload_json(&binary)["text"], Value::Null);
    }

    #[test]
    fn cells_are_one_short_line() {
        assert_eq!(cell("a\n  b"), "a b");
        assert_eq!(cell(&"x".repeat(100)).chars().count(), MAX_CELL_CHARS);
    }
}
