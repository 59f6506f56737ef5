//! Decoding Redis replies (script results, hashes, stream entries) into our types.

use std::collections::HashMap;

use redis::Value;
use serde::Deserialize;

use crate::session::credential::Fingerprint;
use crate::session::error::StoreError;
use crate::session::event::{ClosureSummary, EventKind, SessionMark, StateEvent};
use crate::session::model::{Class, ClosureInfo, SessionId, SessionRecord, SessionStatus};

pub(crate) fn text(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| StoreError::corrupt("Redis returned text that is not UTF-8")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        Value::Okay => Ok("OK".to_owned()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        other => Err(StoreError::corrupt(format!(
            "expected a string from Redis, got {other:?}"
        ))),
    }
}

pub(crate) fn items(value: &Value) -> Result<&[Value], StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(StoreError::corrupt(format!(
            "expected an array from Redis, got {other:?}"
        ))),
    }
}

/// A flat name/value reply (HGETALL, stream fields) as pairs, in reply order.
pub(crate) fn pairs(value: &Value) -> Result<Vec<(String, String)>, StoreError> {
    if let Value::Map(entries) = value {
        return entries
            .iter()
            .map(|(k, v)| Ok((text(k)?, text(v)?)))
            .collect();
    }
    let flat = items(value)?;
    if flat.len() % 2 != 0 {
        return Err(StoreError::corrupt(
            "odd number of items in a name/value reply",
        ));
    }
    flat.chunks(2)
        .map(|pair| Ok((text(&pair[0])?, text(&pair[1])?)))
        .collect()
}

pub(crate) fn number(what: &str, raw: &str) -> Result<u64, StoreError> {
    raw.parse::<u64>()
        .or_else(|_| {
            // Sorted-set scores come back as doubles; whole numbers below 2^53 are exact.
            raw.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_991.0)
                .map(|f| f as u64)
                .ok_or(())
        })
        .map_err(|_| StoreError::corrupt(format!("{what} {raw:?} is not a whole number")))
}

/// A session hash as a record; `None` for an empty hash (the session was never registered).
pub(crate) fn record_from_hash(
    id: &SessionId,
    fields: Vec<(String, String)>,
) -> Result<Option<SessionRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let map: HashMap<String, String> = fields.into_iter().collect();
    let get = |name: &str| map.get(name).map(String::as_str);
    let status = SessionStatus::parse(get("status").unwrap_or("open"))?;
    let scope = match get("scope") {
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|e| StoreError::corrupt(format!("session scope: {e}")))?,
        ),
        None => None,
    };
    let closure = if status == SessionStatus::Closed {
        Some(ClosureInfo {
            class: Class::from_name(get("class").unwrap_or("manual"))
                .map_err(|e| StoreError::corrupt(e.to_string()))?,
            rule: get("rule").unwrap_or_default().to_owned(),
            reason: get("reason").unwrap_or_default().to_owned(),
            detail: get("detail").unwrap_or_default().to_owned(),
            upstream_status: get("upstream_status")
                .map(|s| number("upstream_status", s))
                .transpose()?
                .map(|n| n as u16),
            closed_at_ms: number("closed_at_ms", get("closed_at_ms").unwrap_or("0"))?,
        })
    } else {
        None
    };
    Ok(Some(SessionRecord {
        id: id.clone(),
        epoch: number("epoch", get("epoch").unwrap_or("0"))?,
        status,
        scope,
        resume: get("resume").map(str::to_owned),
        opened_at_ms: get("opened_at_ms")
            .map(|s| number("opened_at_ms", s))
            .transpose()?,
        closure,
    }))
}

/// A stream entry's (or a live message's) fields as an event.
pub(crate) fn event_from_fields(
    id: String,
    fields: HashMap<String, String>,
) -> Result<StateEvent, StoreError> {
    let get = |name: &str| fields.get(name).map(String::as_str);
    let kind_text = get("kind").ok_or_else(|| StoreError::corrupt("event without kind"))?;
    let kind = EventKind::parse(kind_text)
        .ok_or_else(|| StoreError::corrupt(format!("unknown event kind {kind_text:?}")))?;
    let mut event = StateEvent::bare(
        kind,
        number("event epoch", get("epoch").unwrap_or("0"))?,
        number("event at_ms", get("at_ms").unwrap_or("0"))?,
    );
    event.id = id;
    event.session = get("session")
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| StoreError::corrupt(e.to_string()))?;
    event.fingerprint = get("fingerprint")
        .map(Fingerprint::parse)
        .transpose()
        .map_err(|e| StoreError::corrupt(e.to_string()))?;
    event.class = get("class")
        .map(Class::from_name)
        .transpose()
        .map_err(|e| StoreError::corrupt(e.to_string()))?;
    event.rule = get("rule").map(str::to_owned);
    event.reason = get("reason").map(str::to_owned);
    event.detail = get("detail").map(str::to_owned);
    event.upstream_status = get("upstream_status")
        .map(|s| number("upstream_status", s).map(|n| n as u16))
        .transpose()?;
    event.cancelled = get("cancelled")
        .map(|s| number("cancelled", s))
        .transpose()?;
    Ok(event)
}

/// The JSON a script keeps in the partition's marks hash.
#[derive(Deserialize)]
struct MarkJson {
    epoch: String,
    status: String,
    closed_epoch: Option<String>,
    class: Option<String>,
    rule: Option<String>,
    reason: Option<String>,
    closed_at_ms: Option<String>,
}

pub(crate) fn mark_from_json(session: &str, json: &str) -> Result<SessionMark, StoreError> {
    let corrupt = |e: String| StoreError::corrupt(format!("mark of {session:?}: {e}"));
    let mark: MarkJson = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    let last_closure = match (mark.closed_epoch, mark.class) {
        (Some(epoch), Some(class)) => Some(ClosureSummary {
            epoch: number("closed_epoch", &epoch)?,
            class: Class::from_name(&class).map_err(|e| corrupt(e.to_string()))?,
            rule: mark.rule.unwrap_or_default(),
            reason: mark.reason.unwrap_or_default(),
            closed_at_ms: number("closed_at_ms", mark.closed_at_ms.as_deref().unwrap_or("0"))?,
        }),
        _ => None,
    };
    Ok(SessionMark {
        session: SessionId::parse(session).map_err(|e| corrupt(e.to_string()))?,
        epoch: number("epoch", &mark.epoch)?,
        status: SessionStatus::parse(&mark.status)?,
        last_closure,
    })
}

/// A stream id `ms-seq`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub(crate) fn parse(raw: &str) -> Option<StreamId> {
        let (ms, seq) = raw.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_integers_parse_exactly() {
        assert_eq!(number("x", "1732000000000").unwrap(), 1_732_000_000_000);
        assert_eq!(number("x", "1.5e3").unwrap(), 1500);
        assert!(number("x", "1.5").is_err());
        assert!(number("x", "-3").is_err());
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("9-10").unwrap();
        let b = StreamId::parse("10-2").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "9-10");
        assert!(StreamId::parse("abc").is_none());
    }

    #[test]
    fn marks_decode_with_and_without_a_closure() {
        let mark = mark_from_json(
            "s1",
            r#"{"epoch":"4","status":"open","closed_epoch":"3","class":"lost_access","rule":"r","reason":"x","closed_at_ms":"17"}"#,
        )
        .unwrap();
        assert_eq!(mark.epoch, 4);
        assert_eq!(mark.status, SessionStatus::Open);
        assert_eq!(mark.last_closure.unwrap().epoch, 3);
        let bare = mark_from_json("s1", r#"{"epoch":"1","status":"open"}"#).unwrap();
        assert!(bare.last_closure.is_none());
    }
}
