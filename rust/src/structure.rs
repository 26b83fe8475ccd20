//! Printed-document structure (SPEC.md, "Structure"): plain clause headings, TOC entries,
//! block starts and the reflow join rule. The same predicates as
//! components/processing/structure.py; ASCII classes only, so both regex engines agree.
use regex::Regex;
use std::sync::OnceLock;

pub const CLAUSE: &str = r"^(?:[1-9][0-9]?(?:\.[0-9]{1,3}){0,5}|[A-Z](?:\.[0-9]{1,3}){1,5}) (?:[A-Z]|[0-9]+[A-Za-z])";
pub const ANNEX: &str = r"^Annex [A-Z]{1,2}(?: \([a-z]+\))?(?::|: .+)?$";
pub const BLOCK: &str = r"^(?:[-*\x{2022}\x{2013}\x{2014}] |\(?(?:[0-9]{1,3}[).>]|[a-z]{1,2}\)|[ivx]{1,5}\)|[A-Z]\)) |(?:NOTE|EXAMPLE)(?: [0-9]{1,2})?:|Editor's note:|(?:Figure|Table) [A-Z0-9][A-Za-z0-9.]*-[0-9]+)";
pub const BARE_NUMBER: &str = r"^(?:[0-9]{1,2}(?:\.[0-9]{1,3})*|[A-Z](?:\.[0-9]{1,3})+)$";

pub const UNNUMBERED: [&str; 9] = [
    "contents",
    "foreword",
    "introduction",
    "intellectual property rights",
    "legal notice",
    "modal verbs terminology",
    "important notice",
    "copyright notification",
    "history",
];
pub const BOILERPLATE: [&str; 8] = [
    "intellectual property rights",
    "legal notice",
    "modal verbs terminology",
    "important notice",
    "copyright notification",
    "foreword",
    "history",
    "change history",
];
pub const BODY_START: [&str; 2] = ["foreword", "scope"];
pub const CONTENTS: [&str; 2] = ["contents", "table of contents"];
pub const FUNCTION_WORDS: [&str; 29] = [
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "and", "or", "as", "is", "are", "be",
    "that", "which", "than", "via", "per", "into", "its", "their", "this", "shall", "may",
];
pub const MAX_HEADING: usize = 120;

struct Patterns {
    clause: Regex,
    annex: Regex,
    block: Regex,
    bare_number: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        clause: Regex::new(CLAUSE).expect("clause regex"),
        annex: Regex::new(ANNEX).expect("annex regex"),
        block: Regex::new(BLOCK).expect("block regex"),
        bare_number: Regex::new(BARE_NUMBER).expect("bare number regex"),
    })
}

/// One of `set` (all ASCII lower-case), comparing `s` with ASCII letters lower-cased.
pub fn in_set_ascii_ci(s: &str, set: &[&str]) -> bool {
    set.iter().any(|t| t.len() == s.len() && t.eq_ignore_ascii_case(s))
}

#[inline]
pub fn starts_lower(line: &str) -> bool {
    line.as_bytes().first().is_some_and(|b| b.is_ascii_lowercase())
}

#[inline]
pub fn last_word(line: &str) -> &str {
    line.rsplit(' ').next().unwrap_or(line)
}

#[inline]
pub fn is_function_word(w: &str) -> bool {
    w.len() <= 5 && FUNCTION_WORDS.contains(&w)
}

fn char_len_over(line: &str, max: usize) -> bool {
    line.len() > max && line.chars().count() > max
}

/// Could the line start a clause heading? (cheap test before the regex)
#[inline]
fn clause_prefix(b: &[u8]) -> bool {
    match b.first() {
        Some(b'1'..=b'9') => true,
        Some(b'A'..=b'Z') => b.get(1) == Some(&b'.'),
        _ => false,
    }
}

pub fn is_clause(line: &str) -> bool {
    clause_prefix(line.as_bytes()) && patterns().clause.is_match(line)
}

pub fn is_annex(line: &str) -> bool {
    line.starts_with("Annex ") && patterns().annex.is_match(line)
}

/// Level of a plain heading line, 0 if it is none; no context.
pub fn heading_form(line: &str) -> usize {
    if char_len_over(line, MAX_HEADING) {
        return 0;
    }
    if line.len() <= 28 && in_set_ascii_ci(line, &UNNUMBERED) {
        return 1;
    }
    if is_annex(line) {
        return 1;
    }
    if is_clause(line)
        && !matches!(line.as_bytes().last(), Some(b'.' | b',' | b';' | b':'))
        && !is_function_word(last_word(line))
    {
        let number = &line[..line.find(' ').expect("clause has a space")];
        return number.bytes().filter(|&c| c == b'.').count() + 1;
    }
    0
}

/// heading_form, unless the next non-empty line starts lower-case.
pub fn is_heading(line: &str, following: &str) -> usize {
    if starts_lower(following) {
        0
    } else {
        heading_form(line)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClauseNumber {
    Num(u32),
    Annex,
}

pub fn clause_number(title: &str) -> Option<ClauseNumber> {
    if is_annex(title) {
        return Some(ClauseNumber::Annex);
    }
    if is_clause(title) {
        let b = title.as_bytes();
        if b[0].is_ascii_uppercase() {
            return Some(ClauseNumber::Annex);
        }
        let first = title.split(['.', ' ']).next().expect("number");
        return Some(ClauseNumber::Num(first.parse().expect("1-2 digits")));
    }
    None
}

/// A TOC entry without its page number.
pub fn toc_key(line: &str) -> &str {
    let b = line.as_bytes();
    let k = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let mut s = line;
    if (1..=4).contains(&k) && k < b.len() && matches!(b[b.len() - k - 1], b' ' | b'.') {
        s = &line[..line.len() - k];
    }
    s.trim_end_matches([' ', '.'])
}

pub fn is_bare_number(line: &str) -> bool {
    patterns().bare_number.is_match(line)
}

/// The title without a leading clause number (a first word of digits and dots) or annex
/// label (`Annex B (informative): `).
pub fn bare_title(title: &str) -> &str {
    if let Some((_, after)) = title.strip_prefix("Annex ").and_then(|rest| rest.split_once(':')) {
        return after.trim_start_matches(' ');
    }
    match title.split_once(' ') {
        Some((first, rest)) if !first.is_empty() && first.bytes().all(|c| c.is_ascii_digit() || c == b'.') => rest,
        _ => title,
    }
}

#[inline]
fn has_code(s: &str) -> bool {
    memchr::memchr3(b'=', b'{', b'}', s.as_bytes()).is_some()
}

/// Whether reflow appends `b` to the accumulated line `a`; `following` is the next non-empty
/// line after `b` ("" if none), asked for only when needed.
pub fn joins<'a>(a: &str, b: &str, following: impl FnOnce() -> &'a str) -> bool {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let last = *ab.last().expect("non-empty");
    if matches!(ab[0], b'#' | b'|' | b'<') || matches!(bb[0], b'#' | b'|' | b'<') {
        return false;
    }
    if matches!(last, b'.' | b':' | b';' | b'?' | b'!') {
        return false;
    }
    let lower = starts_lower(b);
    if !(lower || last == b',' || is_function_word(last_word(a))) {
        return false;
    }
    if has_code(a) || has_code(b) {
        return false;
    }
    if patterns().block.is_match(b) {
        return false;
    }
    if !lower && heading_form(a) != 0 {
        return false;
    }
    heading_form(b) == 0 || starts_lower(following())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_and_guards() {
        assert_eq!(heading_form("4.2.1 SDAP structure"), 3);
        assert_eq!(heading_form("6.2.2.1 Data PDU without SDAP header"), 4);
        assert_eq!(heading_form("Annex A (informative): Change history"), 1);
        assert_eq!(heading_form("Annex B (normative):"), 1);
        assert_eq!(heading_form("A.1 General"), 2);
        assert_eq!(heading_form("B.2.3 Title"), 3);
        assert_eq!(heading_form("Foreword"), 1);
        assert_eq!(heading_form("Intellectual Property Rights"), 1);
        assert_eq!(heading_form("4 5GS overview"), 1);
        // Not headings: lower-case title, sentences, list items, long lines, function-word end.
        assert_eq!(heading_form("3 times the value"), 0);
        assert_eq!(heading_form("1) The UE shall"), 0);
        assert_eq!(heading_form("2 The UE shall send the message."), 0);
        assert_eq!(heading_form("8 DRBs are configured for the"), 0);
        assert_eq!(heading_form("123 Main"), 0);
        assert_eq!(heading_form("Annex A gives an example"), 0);
        assert_eq!(heading_form(&format!("5 {}", "Word ".repeat(30).trim())), 0);
        assert_eq!(is_heading("1 Scope", "The present document"), 1);
        assert_eq!(is_heading("2 DRBs for each PDU session and", "the SMF"), 0);
        assert_eq!(is_heading("2 DRBs for each PDU session", "the SMF"), 0);
    }

    #[test]
    fn keys_and_numbers() {
        assert_eq!(toc_key("4.2.1 SDAP structure ........ 7"), "4.2.1 SDAP structure");
        assert_eq!(toc_key("Foreword 5"), "Foreword");
        assert_eq!(toc_key("4.3 Timer T310"), "4.3 Timer T310");
        assert_eq!(toc_key("12345"), "12345");
        assert_eq!(clause_number("4.2.1 SDAP structure"), Some(ClauseNumber::Num(4)));
        assert_eq!(clause_number("A.1 General"), Some(ClauseNumber::Annex));
        assert_eq!(bare_title("1 Scope"), "Scope");
        assert_eq!(bare_title("Foreword"), "Foreword");
        assert_eq!(bare_title("Annex B (informative): Change history"), "Change history");
        assert_eq!(bare_title("Annex C"), "Annex C");
        assert!(is_bare_number("6.2.3.1") && is_bare_number("B.1") && !is_bare_number("6.2 x"));
    }

    #[test]
    fn join_rule() {
        let j = |a, b| joins(a, b, || "");
        assert!(j("the UE shall deliver the packets to", "the lower layers."));
        assert!(j("transmitted to the", "UE in the cell."));
        assert!(j("- the first item wraps over", "the next line;"));
        assert!(!j("The UE shall stop.", "then it starts."));
        assert!(!j("SDAP Service Data Adaptation Protocol", "QFI QoS Flow Identifier"));
        assert!(!j("the list is", "a) the first item"));
        assert!(!j("the following for the", "NOTE: A note."));
        assert!(!j("as shown in the", "Figure 6.2.2.1-1: Data PDU"));
        assert!(!j("x = y + z and the", "value"));
        assert!(!j("| a | b |", "continued"));
        // A line ending in a function word is prose, not a heading.
        assert!(j("4.2.1 SDAP structure of the", "UE"));
        assert!(!j("4.2.1 SDAP structure", "UE shall"));
        assert!(!j("then the", "5.1 General"));
    }
}
