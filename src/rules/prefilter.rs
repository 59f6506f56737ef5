//! Literal prefilter: one Aho-Corasick pass over the raw body tells which rules could match.
//!
//! A rule whose `when` has body checks can only match if certain literal text appears in the
//! body: `{ source = "json", path = "error", one_of = ["not_in_channel"] }` needs
//! `"not_in_channel"` (quotes included) and `"error"`. Each rule gets one such set of alternatives (it needs at
//! least one of them); the scan collects the patterns present and only rules with a hit are
//! evaluated, so most responses are decided without parsing JSON and the cost hardly grows with
//! the number of rules.
//!
//! Soundness: literals only come from values whose JSON encoding is their raw text (printable
//! ASCII without `"`, `\` or `/`), so the encoder cannot have changed them; the one way left to
//! hide them is a `\uXXXX` escape, so a body containing one turns the prefilter off. Numbers
//! give no literal (`1e3` equals `1000`), nor do case-insensitive letters in regexes.

use std::collections::HashMap;

use aho_corasick::{packed, AhoCorasick, AhoCorasickBuilder, Input, MatchKind, Span};
use regex_syntax::hir::{Hir, HirKind};

use super::compile::Rule;
use super::matcher::{Check, Source, Test};

/// Every JSON `\u` escape starts with one of these; seeing one turns the prefilter off for the
/// body. Three bytes rather than `\u` alone keep the SIMD search's fingerprints selective.
fn unicode_escapes() -> impl Iterator<Item = Vec<u8>> {
    b"0123456789abcdefABCDEF"
        .iter()
        .map(|&digit| vec![b'\\', b'u', digit])
}

/// Finds the leftmost-longest pattern occurrence from a position.
#[derive(Debug)]
enum Scanner {
    /// aho-corasick's SIMD (Teddy) searcher, for sets of up to about a hundred patterns.
    Packed(packed::Searcher),
    /// Any number of patterns.
    Automaton(AhoCorasick),
}

impl Scanner {
    fn build(patterns: &[Vec<u8>]) -> Result<Scanner, String> {
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build();
        if let Some(searcher) = packed {
            return Ok(Scanner::Packed(searcher));
        }
        AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns)
            .map(Scanner::Automaton)
            .map_err(|error| format!("cannot build the literal prefilter: {error}"))
    }

    fn find(&self, body: &[u8], from: usize) -> Option<(usize, usize)> {
        let found = match self {
            Scanner::Packed(searcher) => searcher.find_in(body, Span::from(from..body.len())),
            Scanner::Automaton(automaton) => {
                automaton.find(Input::new(body).span(from..body.len()))
            }
        }?;
        Some((found.pattern().as_usize(), found.start()))
    }
}

#[derive(Debug)]
pub(crate) struct Prefilter {
    scanner: Option<Scanner>,
    /// Pattern index -> rule indexes (sorted) that a hit on it makes candidates.
    rules_by_pattern: Vec<Box<[u32]>>,
    /// Pattern index -> the patterns that are prefixes of it, itself included.
    prefixes: Vec<Box<[u32]>>,
    /// Patterns from this index on are the `\u` escape sentinels.
    first_escape: u32,
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
        let mut known: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut filtered = Vec::new();
        let mut unfiltered = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            if !rule.enabled {
                continue;
            }
            let index = u32::try_from(index).map_err(|_| "too many rules in one file")?;
            match rule.when.required_literals() {
                Some(literals) => {
                    // What lets `candidates` drop filtered rules on an uninspected body.
                    debug_assert!(rule.when.needs_body());
                    filtered.push(index);
                    for literal in literals {
                        let next = patterns.len();
                        let pattern = *known.entry(literal.clone()).or_insert(next);
                        if pattern == next {
                            patterns.push(literal);
                            rules_by_pattern.push(Vec::new());
                        }
                        rules_by_pattern[pattern].push(index);
                    }
                }
                None => unfiltered.push(index),
            }
        }
        // Rule literals are at least MIN_LITERAL_LEN long, so none equals a sentinel.
        let first_escape = u32::try_from(patterns.len()).map_err(|_| "too many literals")?;
        let scanner = if patterns.is_empty() {
            None
        } else {
            patterns.extend(unicode_escapes());
            Some(Scanner::build(&patterns)?)
        };
        let index_of: HashMap<&[u8], u32> = patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| (pattern.as_slice(), index as u32))
            .collect();
        let prefixes = patterns
            .iter()
            .map(|pattern| {
                (1..=pattern.len())
                    .filter_map(|len| index_of.get(&pattern[..len]).copied())
                    .collect()
            })
            .collect();
        Ok(Prefilter {
            scanner,
            prefixes,
            first_escape,
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
        let (Some(scanner), Some(body)) = (&self.scanner, body) else {
            return Candidates::Some {
                hits,
                unfiltered: &self.unfiltered,
            };
        };
        // Every position where some pattern starts is visited in order (the search restarts one
        // byte after each match start). Leftmost-longest reports the longest pattern starting
        // there; any other pattern starting at the same place is a prefix of it, so marking its
        // prefixes accounts for every occurrence, overlapping ones included.
        let mut patterns = IndexBuf::default();
        let mut from = 0;
        while let Some((found, start)) = scanner.find(body, from) {
            for &pattern in self.prefixes[found].iter() {
                if pattern >= self.first_escape {
                    return Candidates::All;
                }
                if !patterns.contains(pattern) {
                    patterns.push(pattern);
                }
            }
            from = start + 1;
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

/// Shorter literals are too common to rule anything out; they would only slow the scan.
const MIN_LITERAL_LEN: usize = 4;

/// Literal alternatives, one of which appears in any text the regex matches, read from its
/// syntax tree: a concatenation needs every part, an alternation one of its branches, a
/// repetition its body only when it repeats at least once. Case-insensitive letters are classes,
/// not literals, so they give nothing.
fn regex_literals(pattern: &str, bytes: bool) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(!bytes)
        .build()
        .parse(pattern)
        .ok()?;
    required_in(&hir)
}

fn required_in(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    match hir.kind() {
        HirKind::Literal(literal) => Some(vec![literal.0.to_vec()]),
        HirKind::Capture(capture) => required_in(&capture.sub),
        HirKind::Repetition(repetition) if repetition.min > 0 => required_in(&repetition.sub),
        HirKind::Concat(parts) => parts.iter().filter_map(required_in).max_by(rarer),
        HirKind::Alternation(branches) => {
            let mut literals = Vec::new();
            for branch in branches {
                literals.extend(required_in(branch)?);
            }
            Some(literals)
        }
        _ => None,
    }
}

/// Orders literal sets by how rarely they should occur: longest shortest literal, then fewest.
pub(crate) fn rarer(a: &Vec<Vec<u8>>, b: &Vec<Vec<u8>>) -> std::cmp::Ordering {
    let shortest = |set: &Vec<Vec<u8>>| set.iter().map(Vec::len).min().unwrap_or(0);
    shortest(a)
        .cmp(&shortest(b))
        .then_with(|| b.len().cmp(&a.len()))
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

/// The best set of literals one of which must appear in any body on which this check holds, or
/// `None` when it can hold without any (a negated check, a non-body source, no safe literal).
/// `Matcher::required_literals` combines checks: any item's set for `all`, the union for `any`.
pub(crate) fn check_literals(check: &Check) -> Option<Vec<Vec<u8>>> {
    if check.negate {
        return None;
    }
    let mut options: Vec<Vec<Vec<u8>>> = Vec::new();
    match &check.source {
        Source::Json(path) => {
            for key in path.keys() {
                if is_verbatim_in_json(key) {
                    options.push(vec![quoted(key)]);
                }
            }
            match &check.test {
                _ if check.ignore_case => {}
                Test::Equals(value) => options.extend(value_literal(value).map(|l| vec![l])),
                Test::OneOf(values) => {
                    let literals: Option<Vec<Vec<u8>>> = values.iter().map(value_literal).collect();
                    options.extend(literals);
                }
                Test::Contains(text) if is_verbatim_in_json(text) => {
                    options.push(vec![text.as_bytes().to_vec()]);
                }
                Test::Prefix(text) if is_verbatim_in_json(text) => {
                    let mut literal = vec![b'"'];
                    literal.extend_from_slice(text.as_bytes());
                    options.push(vec![literal]);
                }
                Test::Suffix(text) if is_verbatim_in_json(text) => {
                    let mut literal = text.as_bytes().to_vec();
                    literal.push(b'"');
                    options.push(vec![literal]);
                }
                Test::Regex(regex) => {
                    let verbatim = regex_literals(regex.as_str(), false).filter(|set| {
                        set.iter().all(|literal| {
                            std::str::from_utf8(literal).is_ok_and(is_verbatim_in_json)
                        })
                    });
                    options.extend(verbatim);
                }
                _ => {}
            }
        }
        Source::Body => match &check.test {
            _ if check.ignore_case => {}
            Test::Regex(regex) => options.extend(regex_literals(regex.as_str(), true)),
            Test::Contains(text) | Test::Prefix(text) | Test::Suffix(text) => {
                options.push(vec![text.as_bytes().to_vec()])
            }
            Test::Equals(serde_json::Value::String(text)) => {
                options.push(vec![text.as_bytes().to_vec()]);
            }
            _ => {}
        },
        _ => {}
    }
    options
        .into_iter()
        .filter(|set| !set.is_empty() && set.iter().all(|literal| literal.len() >= MIN_LITERAL_LEN))
        .max_by(rarer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::matcher::{build_bytes_regex, Comparison, JsonPath, Matcher};
    use serde_json::json;

    fn check(source: Source, test: Test, negate: bool) -> Matcher {
        Matcher::Check(Box::new(Check {
            source,
            test,
            negate,
            ignore_case: false,
            description: "".into(),
        }))
    }

    fn json_check(path: &str, test: Test) -> Matcher {
        check(Source::Json(JsonPath::parse(path).unwrap()), test, false)
    }

    fn table(json: Vec<(&str, Test)>, body_regex: Option<&str>) -> Matcher {
        let mut items: Vec<Matcher> = json
            .into_iter()
            .map(|(path, test)| json_check(path, test))
            .collect();
        if let Some(pattern) = body_regex {
            items.push(check(
                Source::Body,
                Test::Regex(build_bytes_regex(pattern).unwrap()),
                false,
            ));
        }
        Matcher::All(items.into_boxed_slice())
    }

    fn required_literals(matcher: &Matcher) -> Option<Vec<Vec<u8>>> {
        matcher.required_literals()
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
                ("ok", Test::Equals(json!(false))),
                (
                    "error",
                    Test::OneOf(vec![json!("not_in_channel"), json!("channel_not_found")].into()),
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
        let t = table(vec![("ab", Test::Equals(json!("x/y")))], None);
        assert_eq!(
            strings(required_literals(&t)),
            Some(vec!["\"ab\"".into()]),
            "falls back to the key"
        );
        let t = table(vec![("a", Test::Equals(json!("x/y")))], None);
        assert_eq!(required_literals(&t), None, "`\"a\"` is too short to help");
        let t = table(vec![("[0]", Test::Equals(json!(5)))], None);
        assert_eq!(required_literals(&t), None);
        let t = table(vec![("ok", Test::Equals(json!(true)))], None);
        assert_eq!(
            strings(required_literals(&t)),
            Some(vec!["true".into()]),
            "`\"ok\"` and `true` tie, one literal each"
        );
        let t = table(vec![("é", Test::Exists)], None);
        assert_eq!(required_literals(&t), None);
        let t = Matcher::All(
            vec![check(
                Source::Json(JsonPath::parse("error").unwrap()),
                Test::Exists,
                true,
            )]
            .into_boxed_slice(),
        );
        assert_eq!(required_literals(&t), None, "absence needs no literal");
    }

    #[test]
    fn regexes_give_the_literals_every_match_contains() {
        let literals = |pattern: &str| strings(required_literals(&table(vec![], Some(pattern))));
        let json_literals = |pattern: &str| {
            let test = Test::Regex(build_bytes_regex(pattern).unwrap());
            strings(required_literals(&table(vec![("[0]", test)], None)))
        };
        assert_eq!(
            json_literals("(?i)bad credentials"),
            None,
            "case-insensitive letters"
        );
        assert_eq!(
            json_literals("^Entity not found"),
            Some(vec!["Entity not found".into()])
        );
        assert_eq!(
            json_literals("^a/b path"),
            None,
            "`/` may be escaped in JSON"
        );
        assert_eq!(
            json_literals(r"No message found with message\.uuid"),
            Some(vec!["No message found with message.uuid".into()])
        );
        assert_eq!(
            literals("Repository access blocked|Not Found"),
            Some(vec!["Repository access blocked".into(), "Not Found".into()])
        );
        assert_eq!(
            literals(r#"(?m)^\s*\{"type":\s*"result".*(No conversation found|gone for good)"#),
            Some(vec!["No conversation found".into(), "gone for good".into()])
        );
        assert_eq!(
            literals("access (blocked|denied)?"),
            Some(vec!["access ".into()])
        );
        assert_eq!(
            literals("(?i)rate limit|abuse"),
            None,
            "only spaces are literal"
        );
        assert_eq!(literals("x*|yy"), None, "a branch with no literal");
        assert_eq!(literals("(token)+ (expired)*"), Some(vec!["token".into()]));
    }

    #[test]
    fn any_needs_a_literal_in_every_branch_and_all_takes_the_rarest() {
        let gone = || json_check("error", Test::Equals(json!("channel_gone")));
        let archived = || json_check("error", Test::Equals(json!("is_archived")));
        let status = || check(Source::Status, Test::Compare(Comparison::Ge, 400.0), false);
        let any = Matcher::Any(vec![gone(), archived()].into_boxed_slice());
        assert_eq!(
            strings(required_literals(&any)),
            Some(vec!["\"channel_gone\"".into(), "\"is_archived\"".into()]),
            "either branch may hold, so either literal may be the one present"
        );
        let open = Matcher::Any(vec![gone(), status()].into_boxed_slice());
        assert_eq!(
            required_literals(&open),
            None,
            "a branch without a literal can hold on any body"
        );
        let all = Matcher::All(vec![status(), open, any].into_boxed_slice());
        assert_eq!(
            strings(required_literals(&all)),
            Some(vec!["\"channel_gone\"".into(), "\"is_archived\"".into()]),
            "an item of `all` with literals is enough"
        );
        let negated = check(
            Source::Json(JsonPath::parse("error").unwrap()),
            Test::Equals(json!("channel_gone")),
            true,
        );
        assert_eq!(
            required_literals(&negated),
            None,
            "`not` holds without its literal"
        );
        let body = check(
            Source::Body,
            Test::Contains("Resource blocked".into()),
            false,
        );
        assert_eq!(
            strings(required_literals(&body)),
            Some(vec!["Resource blocked".into()])
        );
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
