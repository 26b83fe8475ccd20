//! Text normalization (SPEC.md, "Normalize").
use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::config::NormalizeConfig;
use crate::structure::{heading_form, in_set_ascii_ci, is_bare_number, joins, toc_key, CONTENTS};

/// Page headers and footers of 3GPP/ETSI documents (`ETSI TS 137 324 V19.0.0 (2025-10)`,
/// `3GPP TS 37.324 version 19.0.0 Release 19`), and bare page numbers.
pub const FURNITURE: &str = r"^(?:(?:3GPP|ETSI) T[SR] [0-9]{2,3}[ .][0-9]{3}(?:-[0-9]{1,2})? V[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2} \([0-9]{4}-[0-9]{2}\)(?: [0-9]{1,4})?|(?:3GPP|ETSI) T[SR] [0-9]{2,3}[ .][0-9]{3}(?:-[0-9]{1,2})? version [0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2} Release [0-9]{1,2}(?: [0-9]{1,4})?|Release [0-9]{1,2}(?: [0-9]{1,4})?|[0-9]{1,4}|Page [0-9]{1,4}(?: of [0-9]{1,4})?|3GPP|ETSI)$";

/// Table-of-contents lines: a clause number glued to its title glued to a page number
/// (`4.2.1SDAP structure7`), front-matter entries (`Foreword5`), annexes, dotted leaders.
/// A line that opens with a generation's name (`5G`, `5GC`, `3GPP`, `4G-LTE`: 2-6 and a `G`
/// not followed by a lower-case letter) is prose, not clause 5's entry (`5General7` is).
pub const TOC: &str = r"^(?:(?:(?:[0-9]{1,2}(?:\.[0-9]{1,3})+|[0-9]{2}|[A-Z](?:\.[0-9]{1,3})+)[A-Z]|[0-9](?:[A-FH-Z]|G[a-z])|[017-9]G)[^|]*[A-Za-z)][0-9]{1,4}|(?:Foreword|Scope|References|Introduction|Contents)[0-9]{1,4}|Annex [A-Z]{1,2}[ :(][^|]*[A-Za-z)][0-9]{1,4}|[^|].*\.{4,} ?[0-9]{1,4})$";

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

    /// Furniture lines end in a digit, ')' or "3GPP"/"ETSI", TOC lines in a digit: the regexes
    /// are skipped for the rest (most prose ends in '.').
    fn is_furniture(&self, line: &str) -> bool {
        self.cfg.strip_page_furniture
            && !line.starts_with(['#', '|'])
            && matches!(line.as_bytes().last(), Some(b'0'..=b'9' | b')' | b'P' | b'I'))
            && self.furniture.is_match(line)
    }

    fn is_toc(&self, line: &str) -> bool {
        self.cfg.strip_toc
            && !line.starts_with(['#', '|'])
            && matches!(line.as_bytes().last(), Some(b'0'..=b'9'))
            && self.toc.is_match(line)
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
        let (mut buf, mut scratch) = (raw.as_bytes().to_vec(), Vec::new());
        self.normalize_in(&mut buf, &mut scratch)
    }

    /// Normalizes the UTF-8 text in `buf`, working in `buf` and `scratch` (both left with
    /// unspecified contents). A caller that keeps the two per thread normalizes a corpus
    /// without fresh memory per document: only the result is allocated (first-touch page
    /// faults cost more than the normalization itself).
    pub fn normalize_in(&self, buf: &mut Vec<u8>, scratch: &mut Vec<u8>) -> String {
        // Printable ASCII and \n (the common case) need no mapping and are already NFC.
        let plain = |b: &u8| (b' '..=b'~').contains(b) || *b == b'\n';
        if !buf.iter().all(plain) {
            // Line endings to \n, other whitespace to a space, invisible controls dropped.
            scratch.clear();
            let mut s = String::from_utf8(std::mem::take(scratch)).expect("empty");
            Self::map_chars(std::str::from_utf8(buf).expect("the caller passes UTF-8"), &mut s);
            if self.cfg.nfc && is_nfc_quick(s.chars()) != IsNormalized::Yes {
                s = s.nfc().collect();
            }
            *scratch = std::mem::replace(buf, s.into_bytes());
        }
        let b = buf;
        let n = b.len();
        // Invariant: the write position w never passes the read position r. Each emitted
        // separator stands for at least as many newlines already read.
        let (mut r, mut w) = (0usize, 0usize);
        let mut pending_blank = false;
        // TOC lines go two or more in a row (furniture between them not counting): the previous
        // non-empty line was a TOC line, and where it was kept, the write state before it.
        let mut prev_toc = false;
        let mut undo: Option<(usize, bool)> = None;
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
            } else {
                let line = std::str::from_utf8(&b[content..at]).expect("utf-8 line");
                if !self.is_furniture(line) {
                    let toc = self.is_toc(line);
                    if toc && prev_toc {
                        // This line and the one before it go; blanks on either side count once.
                        if let Some((w0, blank0)) = undo.take() {
                            w = w0;
                            pending_blank |= blank0;
                        }
                    } else {
                        undo = toc.then_some((w, pending_blank));
                        w = at;
                        pending_blank = false;
                    }
                    prev_toc = toc;
                }
            }
            r = e + 1;
        }
        let doc = std::str::from_utf8(&b[..w]).expect("normalization keeps UTF-8");
        if self.cfg.strip_toc_block || self.cfg.reflow {
            self.structure(doc)
        } else {
            doc.to_string()
        }
    }

    /// Ends with '.' and holds a char other than '.', ' ' and digits.
    fn is_prose(line: &str) -> bool {
        line.ends_with('.') && line.bytes().any(|c| !matches!(c, b'.' | b' ' | b'0'..=b'9'))
    }

    fn is_contents(line: &str) -> bool {
        line.len() <= 17 && in_set_ascii_ci(line, &CONTENTS)
    }

    /// End (exclusive) of the table of contents opened by the `Contents` line `lines[c]`.
    fn toc_end(&self, lines: &[&str], c: usize) -> Option<usize> {
        let mut seen: std::collections::HashSet<&str> = Default::default();
        let (mut toclike, mut prose) = (0usize, 0usize);
        for (j, &line) in lines.iter().enumerate().skip(c + 1) {
            if line.is_empty() {
                continue;
            }
            if line.as_bytes()[0] == b'#' {
                return None;
            }
            let key = toc_key(line);
            if !key.is_empty() && heading_form(key) != 0 {
                if seen.contains(key) {
                    return (4 * prose <= toclike).then_some(j);
                }
                seen.insert(key);
                toclike += 1;
            } else if is_bare_number(line) || self.furniture.is_match(line) || self.toc.is_match(line) {
                toclike += 1;
            } else if Self::is_prose(line) {
                prose += 1;
            }
        }
        None
    }

    /// Steps 7-9 of SPEC.md "Normalize": TOC blocks, reflow, blank-line collapse.
    fn structure(&self, doc: &str) -> String {
        let all: Vec<&str> = doc.split('\n').collect();
        let mut lines: Vec<&str> = Vec::with_capacity(all.len());
        if self.cfg.strip_toc_block && all.iter().any(|l| Self::is_contents(l)) {
            let mut i = 0;
            while i < all.len() {
                if Self::is_contents(all[i]) {
                    if let Some(e) = self.toc_end(&all, i) {
                        i = e;
                        continue;
                    }
                }
                lines.push(all[i]);
                i += 1;
            }
        } else if !self.cfg.reflow {
            return doc.to_string();
        } else {
            lines = all;
        }
        let mut o = String::with_capacity(doc.len());
        let mut acc = usize::MAX; // start in `o` of the last line written (MAX: none yet)
        let mut joined: Vec<usize> = Vec::new(); // where in `o` each line joined to it starts
        let mut pending_blank = false;
        for (i, &line) in lines.iter().enumerate() {
            if line.is_empty() {
                pending_blank = true;
                continue;
            }
            let following = || lines[i + 1..].iter().copied().find(|l| !l.is_empty()).unwrap_or("");
            if self.cfg.reflow && acc != usize::MAX && joins(&o[acc..], line, following) {
                o.push(' ');
                joined.push(o.len());
            } else {
                if acc != usize::MAX {
                    self.unjoin_special(&mut o, acc, &joined);
                    o.push('\n');
                    if pending_blank {
                        o.push('\n');
                    }
                }
                acc = o.len();
                joined.clear();
            }
            o.push_str(line);
            pending_blank = false;
        }
        if acc != usize::MAX {
            self.unjoin_special(&mut o, acc, &joined);
        }
        o
    }

    /// A joined line that is furniture, TOC-shaped or a contents line goes back to the lines
    /// it joined: normalizing again then makes the same joins and keeps the text instead of
    /// dropping it ("9Z" + "a9" has a TOC entry's shape).
    fn unjoin_special(&self, o: &mut String, acc: usize, joined: &[usize]) {
        if joined.is_empty() {
            return;
        }
        let line = &o[acc..];
        if self.is_furniture(line) || self.is_toc(line) || (self.cfg.strip_toc_block && Self::is_contents(line)) {
            for &p in joined {
                o.replace_range(p - 1..p, "\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_with(s: &str, structure: bool) -> String {
        Normalizer::new(&NormalizeConfig {
            nfc: true,
            strip_page_furniture: true,
            strip_toc: true,
            strip_toc_block: structure,
            reflow: structure,
        })
        .normalize(s)
    }

    fn norm(s: &str) -> String {
        norm_with(s, false)
    }

    #[test]
    fn drops_docling_page_furniture_and_joins_across_it() {
        let text = "The entity shall deliver the packets to\n\nETSI TS 137 999 V19.0.0 (2025-10)\n\n12\n\n\
                    3GPP TS 37.999 version 19.0.0 Release 19\n\nthe lower layers.\n\nNext paragraph.";
        assert_eq!(
            norm_with(text, true),
            "The entity shall deliver the packets to the lower layers.\n\nNext paragraph."
        );
        assert_eq!(
            norm_with("3GPP TR 38.999 version 18.1.0 Release 18\nText.", false),
            "Text."
        );
    }

    #[test]
    fn drops_a_contents_block_up_to_the_repeated_heading() {
        let text = "Cover title\n\nContents\n\nForeword\n\n........ 5\n\n1 Scope\n\n........ 6\n\n\
                    4.2.1 FAP structure 7\n\n6.2.3.1\n\n6.2.3.2\n\nForeword\n\nThis document was produced.\n\n\
                    1 Scope\n\nThe scope.";
        assert_eq!(
            norm_with(text, true),
            "Cover title\n\nForeword\n\nThis document was produced.\n\n1 Scope\n\nThe scope."
        );
        // Prose after a stray "Contents" line: not a TOC, nothing dropped.
        let prose = "Contents\n\nThe message carries a list.\n\nEach entry holds a value.\n\nForeword\n\n\
                     1 Scope\n\nForeword";
        assert_eq!(norm_with(prose, true), prose);
    }

    #[test]
    fn reflow_keeps_blocks_apart() {
        let text = "The UE shall send the\n\nmessage when the timer\n\nexpires.\n\n- the first item\n\n\
                    continues here;\n\nNOTE: a note\n\nFigure 5.1-1: A figure\n\n| a | b |\n\n5.2 Timers\n\n\
                    SDAP Service Data Adaptation Protocol\n\nQFI QoS Flow Identifier";
        assert_eq!(
            norm_with(text, true),
            "The UE shall send the message when the timer expires.\n\n- the first item continues here;\n\n\
             NOTE: a note\n\nFigure 5.1-1: A figure\n\n| a | b |\n\n5.2 Timers\n\n\
             SDAP Service Data Adaptation Protocol\n\nQFI QoS Flow Identifier"
        );
    }

    #[test]
    fn a_join_that_would_read_as_furniture_or_toc_is_undone() {
        // Alone, neither line is a TOC entry; joined they would be, and a second pass would drop
        // the prose. They stay apart, so normalizing again changes nothing.
        let text = "8K video is carried over\n\nthe N3\n\nNext.";
        let once = norm_with(text, true);
        assert_eq!(once, "8K video is carried over\nthe N3\n\nNext.");
        assert_eq!(norm_with(&once, true), once);
        assert_eq!(norm_with("9Z\ra9", true), "9Z\na9");
        assert_eq!(norm_with("Table of\ncontents", true), "Table of\ncontents");
        // A longer join that is not special is made as before.
        assert_eq!(norm_with("9Z\na9\nb", true), "9Z a9 b");
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
                    5General7\nForeword5\n5.1 General ........ 12\nThe UE supports 3 carriers.\nIt is Release 17 based.\n\
                    | 42 |\n5GC sends it over N3\n3GPP defines N3\n20MHz carriers are used in band n78";
        assert_eq!(
            norm(text),
            "# 1 Scope\nThe UE supports 3 carriers.\nIt is Release 17 based.\n| 42 |\n\
             5GC sends it over N3\n3GPP defines N3\n20MHz carriers are used in band n78"
        );
    }

    #[test]
    fn switches_turn_stripping_off() {
        let n = Normalizer::new(&NormalizeConfig {
            nfc: false,
            strip_page_furniture: false,
            strip_toc: false,
            strip_toc_block: false,
            reflow: false,
        });
        assert_eq!(
            n.normalize("Release 17\n4.2.1SDAP structure7"),
            "Release 17\n4.2.1SDAP structure7"
        );
    }
}
