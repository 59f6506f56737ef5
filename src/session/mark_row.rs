//! [`MarkRow`]: what the closed set needs of one session (or credential), as a compact
//! binary row. The redb store keeps one per session with closure history, so a start reads
//! these small rows instead of every full session record; the local copy keeps the same rows.

use std::sync::Arc;

use super::closed_set::Detail;
use super::error::StoreError;
use super::event::ClosureSummary;
use super::model::Class;

/// `epoch` and `closed` by max; `closure` is the newest closure (or block) known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MarkRow {
    /// Session epoch, or credential generation.
    pub(crate) epoch: u64,
    /// Closed, or blocked.
    pub(crate) closed: bool,
    pub(crate) closure: Option<ClosureSummary>,
}

impl MarkRow {
    /// Merges one fact into what is known, the same way the closed set does.
    pub(crate) fn merge(
        known: Option<MarkRow>,
        epoch: u64,
        closed: bool,
        closure: Option<(u64, &Detail)>,
    ) -> MarkRow {
        let mut row = known.unwrap_or(MarkRow {
            epoch: 0,
            closed: false,
            closure: None,
        });
        if epoch > row.epoch || (epoch == row.epoch && closed && !row.closed) {
            row.epoch = epoch;
            row.closed = closed;
        }
        if let Some((at, detail)) = closure {
            if at > row.epoch {
                row.epoch = at;
                row.closed = true;
            }
            if row.closure.as_ref().is_none_or(|known| at > known.epoch) {
                row.closure = Some(ClosureSummary {
                    epoch: at,
                    class: detail.class,
                    rule: detail.rule.to_string(),
                    reason: String::new(),
                    closed_at_ms: 0,
                });
            }
        }
        row
    }

    /// The closure as the closed set takes it.
    pub(crate) fn detail(&self) -> Option<(u64, Arc<Detail>)> {
        self.closure.as_ref().map(|c| {
            (
                c.epoch,
                Arc::new(Detail {
                    class: c.class,
                    rule: Arc::from(c.rule.as_str()),
                }),
            )
        })
    }

    /// `epoch` u64, `closed` u8, then with a closure: its epoch u64, closed-at u64, class
    /// (u8 length), rule (u16 length), reason (the rest). Little endian.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut row = Vec::with_capacity(48);
        row.extend_from_slice(&self.epoch.to_le_bytes());
        row.push(u8::from(self.closed));
        if let Some(closure) = &self.closure {
            let class = closure.class.as_str().as_bytes();
            let rule = closure.rule.as_bytes();
            row.extend_from_slice(&closure.epoch.to_le_bytes());
            row.extend_from_slice(&closure.closed_at_ms.to_le_bytes());
            // Classes are at most 64 bytes and rules at most MAX_RULE_BYTES (checked on write).
            row.push(class.len() as u8);
            row.extend_from_slice(class);
            row.extend_from_slice(&(rule.len() as u16).to_le_bytes());
            row.extend_from_slice(rule);
            row.extend_from_slice(closure.reason.as_bytes());
        }
        row
    }

    pub(crate) fn decode(row: &[u8]) -> Result<MarkRow, StoreError> {
        let mut reader = Reader(row);
        let epoch = reader.u64()?;
        let closed = reader.u8()? == 1;
        let closure = if reader.0.is_empty() {
            None
        } else {
            let epoch = reader.u64()?;
            let closed_at_ms = reader.u64()?;
            let class_len = usize::from(reader.u8()?);
            let class = reader.text(class_len)?;
            let rule_len = usize::from(u16::from_le_bytes(reader.take(2)?.try_into().unwrap()));
            let rule = reader.text(rule_len)?.to_owned();
            let reason = reader.text(reader.0.len())?.to_owned();
            Some(ClosureSummary {
                epoch,
                class: Class::from_name(class).map_err(|_| corrupt())?,
                rule,
                reason,
                closed_at_ms,
            })
        };
        Ok(MarkRow {
            epoch,
            closed,
            closure,
        })
    }
}

fn corrupt() -> StoreError {
    StoreError::corrupt("a closure mark row does not decode")
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn text(&mut self, n: usize) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_and_without_a_closure() {
        let bare = MarkRow {
            epoch: 3,
            closed: false,
            closure: None,
        };
        assert_eq!(MarkRow::decode(&bare.encode()).unwrap(), bare);
        let closed = MarkRow {
            epoch: 9_007_199_254_740_991,
            closed: true,
            closure: Some(ClosureSummary {
                epoch: 9_007_199_254_740_991,
                class: Class::from_name("custom_class").unwrap(),
                rule: "slack.not_in_channel".into(),
                reason: "The bot was removed — ünïcode".into(),
                closed_at_ms: 1_700_000_000_000,
            }),
        };
        assert_eq!(MarkRow::decode(&closed.encode()).unwrap(), closed);
        let encoded = closed.encode();
        // A row cut right after `closed` reads as one without a closure; any other cut short
        // of the reason is refused.
        let reason_starts = encoded.len() - "The bot was removed — ünïcode".len();
        for cut in (1..9).chain(10..reason_starts) {
            assert!(MarkRow::decode(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn merge_keeps_the_max_and_the_newest_closure() {
        let detail = |rule: &str| Detail {
            class: Class::LostAccess,
            rule: Arc::from(rule),
        };
        let closed = MarkRow::merge(None, 0, true, Some((0, &detail("a"))));
        let reopened = MarkRow::merge(Some(closed.clone()), 1, false, None);
        assert_eq!((reopened.epoch, reopened.closed), (1, false));
        assert_eq!(reopened.closure.as_ref().unwrap().rule, "a");
        let stale = MarkRow::merge(Some(reopened.clone()), 0, true, Some((0, &detail("b"))));
        assert_eq!(stale, reopened, "an older fact changes nothing");
    }
}
