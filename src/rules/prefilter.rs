//! Literal prefilter: one Aho-Corasick pass over the raw body tells which rules could match.
//!
//! A rule whose `when` has body matchers can only match if certain literal text appears in the
//! body: `json = [{ path = "error", one_of = ["not_in_channel"] }]` needs `"not_in_channel"`
//! (quotes included) and `"error"`. Each rule gets one such set of alternatives (it needs at
//! least one of them); the scan collects the patterns present and only rules with a hit are
//! evaluated, so most responses are decided without parsing JSON and the cost hardly grows with
//! the number of rules.
//!
//! Soundness: literals only come from values whose JSON encoding is their raw text (printable
//! ASCII without `"`, `\` or `/`), so the encoder cannot have changed them; the one way left to
//! hide them is a `\uXXXX` escape, so a body containing `\u` turns the prefilter off. Numbers
//! give no literal (`1e3` equals `1000`), nor do case-insensitive or non-literal regexes.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::compile::Rule;
use super::matcher::{MatchTable, ValueTest};

/// The sentinel that disables the prefilter for one body.
const UNICODE_ESCAPE: &[u8] = br"\u";

#[derive(Debug)]
pub(crate) struct Prefilter {
    automaton: Option<AhoCorasick>,
    /// Pattern index -> rule indexes (sorted) that a hit on it makes candidates.
    rules_by_pattern: Vec<Box<[u32]>>,
    /// Enabled rules with a literal requirement, for bodies where the prefilter is off.
    filtered: Box<[u32]>,
    /// Enabled rules without one: always evaluated.
    unfiltered: Box<[u32]>,
}

/// Rule indexes, inline up to a small count so the common path does not allocate.
#[derive(Debug, Default)]
pub(crate) struct IndexBuf {
    inline: [u32; 16],
    len: usize,
    spill: Vec<u32>,
}

impl IndexBuf {
    pub(crate) fn push(&mut self, value: u32) {
        if self.len < self.inline.len() {
            self.inline[self.len] = value;
            self.len += 1;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(value);
        }
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        if self.spill.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill
        }
    }

    pub(crate) fn contains(&self, value: u32) -> bool {
        self.as_slice().contains(&value)
    }

    pub(crate) fn sort_dedup(&mut self) {
        self.as_mut_slice().sort_unstable();
        if self.spill.is_empty() {
            let mut kept = 0;
            for index in 0..self.len {
                if kept == 0 || self.inline[kept - 1] != self.inline[index] {
                    self.inline[kept] = self.inline[index];
                    kept += 1;
                }
            }
            self.len = kept;
        } else {
            self.spill.dedup();
        }
    }
}

/// The rules to evaluate for one body.
pub(crate) enum Candidates<'p> {
    /// Every enabled rule (no usable body, or the prefilter is off for this body).
    All,
    /// These sorted rule indexes, merged with the unfiltered ones.
    Some {
        hits: IndexBuf,
        unfiltered: &'p [u32],
    },
}

impl Prefilter {
    pub(crate) fn build(rules: &[Rule]) -> Result<Prefilter, String> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut rules_by_pattern: Vec<Vec<u32>> = Vec::new();
        let mut filtered = Vec::new();
        let mut unfiltered = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            if !rule.enabled {
                continue;
            }
            let index = u32::try_from(index).map_err(|_| "too many rules in one file")?;
            match required_literals(&rule.when) {
                Some(literals) => {
                    filtered.push(index);
                    for literal in literals {
                        let pattern = match patterns.iter().position(|known| *known == literal) {
                            Some(pattern) => pattern,
                            None => {
                                patterns.push(literal);
                                rules_by_pattern.push(Vec::new());
                                patterns.len() - 1
                            }
                        };
                        rules_by_pattern[pattern].push(index);
                    }
                }
                None => unfiltered.push(index),
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            patterns.push(UNICODE_ESCAPE.to_vec());
            let automaton = AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&patterns)
                .map_err(|error| format!("cannot build the literal prefilter: {error}"))?;
            Some(automaton)
        };
        Ok(Prefilter {
            automaton,
            rules_by_pattern: rules_by_pattern
                .into_iter()
                .map(|mut indexes| {
                    indexes.dedup();
                    indexes.into_boxed_slice()
                })
                .collect(),
            filtered: filtered.into_boxed_slice(),
            unfiltered: unfiltered.into_boxed_slice(),
        })
    }

    pub(crate) fn unfiltered(&self) -> &[u32] {
        &self.unfiltered
    }

    pub(crate) fn filtered(&self) -> &[u32] {
        &self.filtered
    }

    /// Scans `body` once. `None` body (uninspected) leaves only the unfiltered rules: every
    /// filtered rule has a body matcher in `when`, which is false on an uninspected body.
    pub(crate) fn candidates(&self, body: Option<&[u8]>) -> Candidates<'_> {
        let mut hits = IndexBuf::default();
        let (Some(automaton), Some(body)) = (&self.automaton, body) else {
            return Candidates::Some {
                hits,
                unfiltered: &self.unfiltered,
            };
        };
        let escape = self.rules_by_pattern.len();
        let mut patterns = IndexBuf::default();
        // Overlapping, so a literal inside or across another one is still seen.
        for found in automaton.find_overlapping_iter(body) {
            let pattern = found.pattern().as_usize();
            if pattern == escape {
                return Candidates::All;
            }
            let pattern = pattern as u32;
            if !patterns.contains(pattern) {
                patterns.push(pattern);
            }
        }
        for &pattern in patterns.as_slice() {
            for &rule in self.rules_by_pattern[pattern as usize].iter() {
                hits.push(rule);
            }
        }
        hits.sort_dedup();
        Candidates::Some {
            hits,
            unfiltered: &self.unfiltered,
        }
    }
}

/// Merges two sorted index lists into one ascending sequence without duplicates.
pub(crate) fn merge_sorted<'s>(a: &'s [u32], b: &'s [u32]) -> impl Iterator<Item = usize> + 's {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x == y => {
                i += 1;
                j += 1;
                x
            }
            (Some(&x), Some(&y)) if x < y => {
                i += 1;
                x
            }
            (_, Some(&y)) => {
                j += 1;
                y
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (None, None) => return None,
        };
        Some(next as usize)
    })
}

/// Text the JSON encoder leaves as is, so it appears verbatim in any body holding the value.
fn is_verbatim_in_json(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'/'))
}

fn quoted(text: &str) -> Vec<u8> {
    let mut literal = Vec::with_capacity(text.len() + 2);
    literal.push(b'"');
    literal.extend_from_slice(text.as_bytes());
    literal.push(b'"');
    literal
}

/// A regex that is plain text (no metacharacters, no flags) matches only that text.
fn plain_literal(pattern: &str) -> Option<&str> {
    (!pattern.is_empty() && regex::escape(pattern) == pattern).then_some(pattern)
}

fn value_literal(value: &serde_json::Value) -> Option<Vec<u8>> {
    match value {
        serde_json::Value::String(text) if is_verbatim_in_json(text) => Some(quoted(text)),
        serde_json::Value::Bool(true) => Some(b"true".to_vec()),
        serde_json::Value::Bool(false) => Some(b"false".to_vec()),
        serde_json::Value::Null => Some(b"null".to_vec()),
        _ => None,
    }
}

/// The best set of literals one of which must appear in any body the table's `when` matches,
/// or `None` when the body matchers give no safe literal.
pub(crate) fn required_literals(table: &MatchTable) -> Option<Vec<Vec<u8>>> {
    let mut options: Vec<Vec<Vec<u8>>> = Vec::new();
    for test in &table.json {
        if matches!(test.test, ValueTest::Exists(false)) {
            continue;
        }
        for key in test.path.keys() {
            if is_verbatim_in_json(key) {
                options.push(vec![quoted(key)]);
            }
        }
        match &test.test {
            ValueTest::Equals(value) => options.extend(value_literal(value).map(|l| vec![l])),
            ValueTest::OneOf(values) => {
                let literals: Option<Vec<Vec<u8>>> = values.iter().map(value_literal).collect();
                options.extend(literals);
            }
            ValueTest::Regex(regex) => {
                if let Some(text) = plain_literal(regex.as_str()).filter(|t| is_verbatim_in_json(t))
                {
                    options.push(vec![text.as_bytes().to_vec()]);
                }
            }
            ValueTest::Exists(_) => {}
        }
    }
    if let Some(body_regex) = &table.body_regex {
        let alternatives: Option<Vec<Vec<u8>>> = body_regex
            .pattern
            .split('|')
            .map(|part| plain_literal(part).map(|text| text.as_bytes().to_vec()))
            .collect();
        options.extend(alternatives);
    }
    // The rarest option wins: longest shortest literal, then fewest literals.
    options.into_iter().max_by(|a, b| {
        let shortest = |set: &Vec<Vec<u8>>| set.iter().map(Vec::len).min().unwrap_or(0);
        shortest(a)
            .cmp(&shortest(b))
            .then_with(|| b.len().cmp(&a.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::matcher::{
        build_bytes_regex, build_regex, BodyRegex, HeadMatcher, JsonPath, JsonTest,
    };
    use serde_json::json;
    use std::sync::Arc;

    fn table(json: Vec<(&str, ValueTest)>, body_regex: Option<&str>) -> MatchTable {
        MatchTable {
            head: Arc::new(HeadMatcher::default()),
            body_regex: body_regex.map(|pattern| BodyRegex {
                regex: build_bytes_regex(pattern).unwrap(),
                pattern: pattern.into(),
                description: "".into(),
            }),
            json: json
                .into_iter()
                .map(|(path, test)| JsonTest {
                    path: JsonPath::parse(path).unwrap(),
                    test,
                    description: "".into(),
                })
                .collect(),
            request: Vec::new(),
            scope_absent: None,
        }
    }

    fn strings(literals: Option<Vec<Vec<u8>>>) -> Option<Vec<String>> {
        literals.map(|set| {
            set.into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect()
        })
    }

    #[test]
    fn picks_the_rarest_literal_set() {
        let t = table(
            vec![
                ("ok", ValueTest::Equals(json!(false))),
                (
                    "error",
                    ValueTest::OneOf(vec![json!("not_in_channel"), json!("channel_not_found")]),
                ),
            ],
            None,
        );
        assert_eq!(
            strings(required_literals(&t)),
            Some(vec![
                "\"not_in_channel\"".into(),
                "\"channel_not_found\"".into()
            ])
        );
    }

    #[test]
    fn escaped_or_numeric_values_give_no_value_literal() {
        let t = table(vec![("a", ValueTest::Equals(json!("x/y")))], None);
        assert_eq!(
            strings(required_literals(&t)),
            Some(vec!["\"a\"".into()]),
            "falls back to the key"
        );
        let t = table(vec![("[0]", ValueTest::Equals(json!(5)))], None);
        assert_eq!(required_literals(&t), None);
        let t = table(vec![("é", ValueTest::Exists(true))], None);
        assert_eq!(required_literals(&t), None);
        let t = table(vec![("error", ValueTest::Exists(false))], None);
        assert_eq!(required_literals(&t), None, "absence needs no literal");
    }

    #[test]
    fn regexes_give_literals_only_when_plain() {
        let t = table(
            vec![(
                "[0]",
                ValueTest::Regex(build_regex("(?i)bad credentials").unwrap()),
            )],
            None,
        );
        assert_eq!(required_literals(&t), None);
        let t = table(
            vec![(
                "[0]",
                ValueTest::Regex(build_regex("Bad credentials").unwrap()),
            )],
            None,
        );
        assert_eq!(
            strings(required_literals(&t)),
            Some(vec!["Bad credentials".into()])
        );
        let t = table(vec![], Some("Repository access blocked|Not Found"));
        assert_eq!(
            strings(required_literals(&t)),
            Some(vec!["Repository access blocked".into(), "Not Found".into()])
        );
        let t = table(vec![], Some("access (blocked|denied)"));
        assert_eq!(required_literals(&t), None);
    }

    #[test]
    fn index_buffer_spills_and_dedups() {
        let mut buf = IndexBuf::default();
        for value in (0..40).rev().chain(0..40) {
            buf.push(value);
        }
        buf.sort_dedup();
        assert_eq!(buf.as_slice(), (0..40).collect::<Vec<_>>().as_slice());
        let mut small = IndexBuf::default();
        for value in [3, 1, 3, 2, 1] {
            small.push(value);
        }
        small.sort_dedup();
        assert_eq!(small.as_slice(), &[1, 2, 3]);
    }

    #[test]
    fn merge_keeps_order_and_drops_duplicates() {
        let merged: Vec<usize> = merge_sorted(&[1, 4, 6], &[0, 4, 5, 9]).collect();
        assert_eq!(merged, vec![0, 1, 4, 5, 6, 9]);
        assert_eq!(merge_sorted(&[], &[2]).collect::<Vec<_>>(), vec![2]);
    }
}
