//! Text normalization (SPEC.md, "Normalize").
use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::config::NormalizeConfig;

/// Page headers and footers of 3GPP/ETSI documents, and bare page numbers.
pub const FURNITURE: &str = r"^(?:(?:3GPP|ETSI) T[SR] [0-9]{2,3}[ .][0-9]{3}(?:-[0-9]{1,2})? V[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2} \([0-9]{4}-[0-9]{2}\)(?: [0-9]{1,4})?|Release [0-9]{1,2}(?: [0-9]{1,4})?|[0-9]{1,4}|Page [0-9]{1,4}(?: of [0-9]{1,4})?|3GPP|ETSI)$";

/// Table-of-contents lines: a clause number glued to its title glued to a page number
/// (`4.2.1SDAP structure7`), front-matter entries (`Foreword5`), annexes, dotted leaders.
pub const TOC: &str = r"^(?:(?:[0-9]{1,2}(?:\.[0-9]{1,3})*|[A-Z](?:\.[0-9]{1,3})+)[A-Z][^|]*[A-Za-z)][0-9]{1,4}|(?:Foreword|Scope|References|Introduction|Contents)[0-9]{1,4}|Annex [A-Z]{1,2}[ :(][^|]*[A-Za-z)][0-9]{1,4}|[^|].*\.{4,} ?[0-9]{1,4})$";

pub fn is_hspace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{0b}' | '\u{0c}' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

pub fn is_removed(c: char) -> bool {
    matches!(c, '\u{00}'..='\u{08}' | '\u{0e}'..='\u{1f}' | '\u{7f}' | '\u{200b}' | '\u{feff}')
}

pub struct Normalizer {
    cfg: NormalizeConfig,
    furniture: Regex,
    toc: Regex,
}

impl Normalizer {
    pub fn new(cfg: &NormalizeConfig) -> Self {
        Normalizer {
            cfg: cfg.clone(),
            furniture: Regex::new(FURNITURE).expect("furniture regex"),
            toc: Regex::new(TOC).expect("toc regex"),
        }
    }

    fn drop_line(&self, line: &str) -> bool {
        if line.starts_with('#') || line.starts_with('|') {
            return false;
        }
        // Every furniture and TOC line ends in a digit, ')' or "3GPP"/"ETSI": skip the
        // regexes for the rest (most prose ends in '.').
        match line.as_bytes().last() {
            Some(b'0'..=b'9' | b')' | b'P' | b'I') => {}
            _ => return false,
        }
        (self.cfg.strip_page_furniture && self.furniture.is_match(line))
            || (self.cfg.strip_toc && self.toc.is_match(line))
    }

    fn map_chars(raw: &str, s: &mut String) {
        let mut it = raw.chars().peekable();
        while let Some(c) = it.next() {
            if c == '\r' {
                if it.peek() == Some(&'\n') {
                    it.next();
                }
                s.push('\n');
            } else if c == '\n' {
                s.push('\n');
            } else if is_hspace(c) {
                s.push(' ');
            } else if !is_removed(c) {
                s.push(c);
            }
        }
    }

    pub fn normalize(&self, raw: &str) -> String {
        self.normalize_owned(raw.to_string())
    }

    /// Normalizes in place where it can: the line pass only ever shrinks the text, so it
    /// compacts the buffer it reads (fresh memory is costly at corpus scale).
    pub fn normalize_owned(&self, raw: String) -> String {
        // Printable ASCII and \n (the common case) need no mapping and are already NFC.
        let plain = |b: u8| (b' '..=b'~').contains(&b) || b == b'\n';
        let s = if raw.bytes().all(plain) {
            raw
        } else {
            // Line endings to \n, other whitespace to a space, invisible controls dropped.
            let mut s = String::with_capacity(raw.len());
            Self::map_chars(&raw, &mut s);
            if self.cfg.nfc && is_nfc_quick(s.chars()) != IsNormalized::Yes {
                s = s.nfc().collect();
            }
            s
        };
        let mut b = s.into_bytes();
        let n = b.len();
        // Invariant: the write position w never passes the read position r. Each emitted
        // separator stands for at least as many newlines already read.
        let (mut r, mut w) = (0usize, 0usize);
        let mut pending_blank = false;
        while r <= n {
            let e = memchr::memchr(b'\n', &b[r..]).map_or(n, |p| r + p);
            let line = &b[r..e];
            let collapse = line.first() == Some(&b' ')
                || line.last() == Some(&b' ')
                || memchr::memmem::find(line, b"  ").is_some();
            let mut at = w;
            if w > 0 {
                b[at] = b'\n';
                at += 1;
                if pending_blank {
                    b[at] = b'\n';
                    at += 1;
                }
            }
            let content = at;
            if collapse {
                let mut space = true;
                for i in r..e {
                    let c = b[i];
                    if c != b' ' || !space {
                        b[at] = c;
                        at += 1;
                    }
                    space = c == b' ';
                }
                if at > content && b[at - 1] == b' ' {
                    at -= 1;
                }
            } else {
                b.copy_within(r..e, content);
                at = content + (e - r);
            }
            if at == content {
                pending_blank = true;
            } else if !self.drop_line(std::str::from_utf8(&b[content..at]).expect("utf-8 line")) {
                w = at;
                pending_blank = false;
            }
            r = e + 1;
        }
        b.truncate(w);
        String::from_utf8(b).expect("normalization keeps UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Normalizer::new(&NormalizeConfig {
            nfc: true,
            strip_page_furniture: true,
            strip_toc: true,
        })
        .normalize(s)
    }

    #[test]
    fn whitespace_and_line_endings() {
        assert_eq!(norm("\u{feff}  a\t\tb \r\n\r\n\r\nc\rd  \n\n"), "a b\n\nc\nd");
        assert_eq!(norm("x\u{00a0}y\u{200b}z\u{0007}"), "x yz");
    }

    #[test]
    fn nfc_composes() {
        assert_eq!(norm("e\u{0301}"), "\u{e9}");
    }

    #[test]
    fn drops_page_furniture_and_toc_but_not_prose() {
        let text = "# 1 Scope\n3GPP TS 38.331 V17.4.0 (2023-03)\n42\nRelease 17\n4.2.1SDAP structure7\n\
                    Foreword5\n5.1 General ........ 12\nThe UE supports 3 carriers.\nIt is Release 17 based.\n| 42 |";
        assert_eq!(
            norm(text),
            "# 1 Scope\nThe UE supports 3 carriers.\nIt is Release 17 based.\n| 42 |"
        );
    }

    #[test]
    fn switches_turn_stripping_off() {
        let n = Normalizer::new(&NormalizeConfig {
            nfc: false,
            strip_page_furniture: false,
            strip_toc: false,
        });
        assert_eq!(
            n.normalize("Release 17\n4.2.1SDAP structure7"),
            "Release 17\n4.2.1SDAP structure7"
        );
    }
}
