//! Heading-aware chunking (SPEC.md, "Chunk"). Offsets are in Unicode code points.
use crate::config::ChunkConfig;
use crate::structure::{bare_title, clause_number, in_set_ascii_ci, is_heading, ClauseNumber, BODY_START, BOILERPLATE};

/// A normalized document, indexable by code point. ASCII documents (the common case) index
/// the bytes directly; others keep the chars and each char's byte offset.
pub enum Doc<'a> {
    Ascii(&'a str),
    Wide {
        text: &'a str,
        chars: Vec<char>,
        bytes: Vec<usize>,
    },
}

impl<'a> Doc<'a> {
    pub fn new(text: &'a str) -> Self {
        if text.is_ascii() {
            Doc::Ascii(text)
        } else {
            let (mut chars, mut bytes) = (Vec::with_capacity(text.len()), Vec::with_capacity(text.len() + 1));
            for (b, c) in text.char_indices() {
                chars.push(c);
                bytes.push(b);
            }
            bytes.push(text.len());
            Doc::Wide { text, chars, bytes }
        }
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Doc::Ascii(t) => t.len(),
            Doc::Wide { chars, .. } => chars.len(),
        }
    }
    #[inline]
    pub fn at(&self, i: usize) -> u32 {
        match self {
            Doc::Ascii(t) => t.as_bytes()[i] as u32,
            Doc::Wide { chars, .. } => chars[i] as u32,
        }
    }
    /// The text of code points [s, e).
    pub fn str(&self, s: usize, e: usize) -> &'a str {
        match self {
            Doc::Ascii(t) => &t[s..e],
            Doc::Wide { text, bytes, .. } => &text[bytes[s]..bytes[e]],
        }
    }
    /// The byte range of code points [s, e).
    pub fn byte_range(&self, s: usize, e: usize) -> (usize, usize) {
        match self {
            Doc::Ascii(_) => (s, e),
            Doc::Wide { bytes, .. } => (bytes[s], bytes[e]),
        }
    }
    pub fn slice(&self, s: usize, e: usize) -> String {
        self.str(s, e).to_string()
    }
    /// End of the line starting at `s`: the index of the next '\n', or the length.
    #[inline]
    fn line_end(&self, s: usize) -> usize {
        match self {
            Doc::Ascii(t) => memchr::memchr(b'\n', &t.as_bytes()[s..]).map_or(t.len(), |p| s + p),
            Doc::Wide { chars, .. } => chars[s..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| s + p),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Heading,
    Table,
    Paragraph,
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    pub section: usize,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub heading: String,
    pub path: Vec<String>,
    /// `body`, `front_matter` or `boilerplate` (SPEC.md, "Chunk kinds").
    pub kind: &'static str,
}

impl Default for Section {
    fn default() -> Self {
        Section {
            heading: String::new(),
            path: Vec::new(),
            kind: "body",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub section: usize,
}

const NL: u32 = '\n' as u32;
const SP: u32 = ' ' as u32;
const HASH: u32 = '#' as u32;
const PIPE: u32 = '|' as u32;

/// Heading level of the line [s, e): 1-6 '#', a space, then at least one character.
fn heading_level(d: &Doc, s: usize, e: usize) -> Option<usize> {
    let mut n = 0;
    while s + n < e && d.at(s + n) == HASH {
        n += 1;
    }
    if (1..=6).contains(&n) && s + n + 1 < e && d.at(s + n) == SP {
        Some(n)
    } else {
        None
    }
}

/// The clause numbering seen so far, for the plausibility guard on plain headings.
#[derive(Default)]
struct Numbering {
    top: u32,
    in_annex: bool,
}

impl Numbering {
    fn advance(&mut self, title: &str) {
        match clause_number(title) {
            Some(ClauseNumber::Annex) => self.in_annex = true,
            Some(ClauseNumber::Num(n)) => self.top = n,
            None => {}
        }
    }
    fn plausible(&self, line: &str, level: usize) -> bool {
        match clause_number(line) {
            Some(ClauseNumber::Num(n)) => {
                !self.in_annex && n <= self.top + 3 && if level == 1 { n > self.top } else { n >= self.top }
            }
            _ => true,
        }
    }
}

/// The first char of the next non-empty line after the line ending at `e` ("" if none).
fn following<'a>(d: &Doc<'a>, e: usize) -> &'a str {
    let n = d.len();
    let mut i = e;
    while i < n && d.at(i) == NL {
        i += 1;
    }
    if i < n {
        d.str(i, i + 1)
    } else {
        ""
    }
}

/// Level of a plain (non-'#') heading line [s, e) in context, 0 if it is none.
fn plain_heading(d: &Doc, s: usize, e: usize, numbering: &Numbering) -> usize {
    // Cheap pre-test: every plain heading starts with an ASCII letter or digit.
    if !char::from_u32(d.at(s)).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return 0;
    }
    let line = d.str(s, e);
    let level = is_heading(line, following(d, e));
    if level != 0 && numbering.plausible(line, level) {
        level
    } else {
        0
    }
}

/// Splits the document into heading, table and paragraph units, tracking the section path.
pub fn units(d: &Doc, cfg: &ChunkConfig) -> (Vec<Section>, Vec<Unit>) {
    let mut sections = vec![Section::default()];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut current = 0usize;
    let mut out: Vec<Unit> = Vec::new();
    let mut numbering = Numbering::default();
    let n = d.len();
    let mut s = 0;
    // `open` is the paragraph/table unit being extended by consecutive lines.
    let mut open: Option<Unit> = None;
    while s <= n {
        let e = if s < n { d.line_end(s) } else { n };
        let heading = if e == s {
            None
        } else if let Some(level) = heading_level(d, s, e) {
            Some((level, s + level + 1))
        } else if cfg.clause_headings {
            match plain_heading(d, s, e, &numbering) {
                0 => None,
                level => Some((level, s)),
            }
        } else {
            None
        };
        if e == s {
            if let Some(u) = open.take() {
                out.push(u);
            }
        } else if let Some((level, title_start)) = heading {
            if let Some(u) = open.take() {
                out.push(u);
            }
            while stack.last().is_some_and(|(l, _)| *l >= level) {
                stack.pop();
            }
            let title = d.slice(title_start, e);
            numbering.advance(&title);
            stack.push((level, title.clone()));
            sections.push(Section {
                heading: title,
                path: stack.iter().map(|(_, t)| t.clone()).collect(),
                kind: "body",
            });
            current = sections.len() - 1;
            out.push(Unit {
                kind: Kind::Heading,
                start: s,
                end: e,
                section: current,
            });
        } else {
            let kind = if d.at(s) == PIPE { Kind::Table } else { Kind::Paragraph };
            match open.as_mut() {
                Some(u) if u.kind == kind => u.end = e,
                _ => {
                    if let Some(u) = open.take() {
                        out.push(u);
                    }
                    open = Some(Unit {
                        kind,
                        start: s,
                        end: e,
                        section: current,
                    });
                }
            }
        }
        s = e + 1;
    }
    if let Some(u) = open.take() {
        out.push(u);
    }
    if cfg.mark_boilerplate {
        mark_kinds(&mut sections);
    }
    (sections, out)
}

/// boilerplate: a title on the path is a legal/front-page title; front_matter: before the
/// first `Foreword` or `Scope` heading (when there is one); else body.
fn mark_kinds(sections: &mut [Section]) {
    let body_start = sections
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, s)| in_set_ascii_ci(bare_title(&s.heading), &BODY_START))
        .map(|(i, _)| i);
    for (i, s) in sections.iter_mut().enumerate() {
        s.kind = if s.path.iter().any(|t| in_set_ascii_ci(bare_title(t), &BOILERPLATE)) {
            "boilerplate"
        } else if body_start.is_some_and(|b| i < b) {
            "front_matter"
        } else {
            "body"
        };
    }
}

/// Splits paragraphs longer than `max` at the last space or newline that keeps a piece at
/// least half the budget, else hard at the budget. The caller passes max_chars - overlap_chars
/// so that a piece plus its overlap still fits a chunk.
fn split_long(d: &Doc, units: Vec<Unit>, max: usize) -> Vec<Unit> {
    let mut out = Vec::with_capacity(units.len());
    for u in units {
        if u.kind != Kind::Paragraph || u.end - u.start <= max {
            out.push(u);
            continue;
        }
        let mut pos = u.start;
        while u.end - pos > max {
            let limit = pos + max;
            let mut q = limit;
            while q > pos && !(d.at(q) == SP || d.at(q) == NL) {
                q -= 1;
            }
            if q > pos && q - pos >= max / 2 {
                out.push(Unit {
                    end: q,
                    start: pos,
                    ..u.clone()
                });
                pos = q + 1;
            } else {
                out.push(Unit {
                    end: limit,
                    start: pos,
                    ..u.clone()
                });
                pos = limit;
            }
        }
        out.push(Unit { start: pos, ..u });
    }
    out
}

/// Where a chunk that starts with unit `u` begins when it carries overlap from `prev`.
fn overlap_start(d: &Doc, prev: &Unit, u: &Unit, cfg: &ChunkConfig) -> usize {
    if cfg.overlap_chars == 0 || prev.kind != Kind::Paragraph || u.kind == Kind::Heading {
        return u.start;
    }
    let p0 = u.start.saturating_sub(cfg.overlap_chars);
    let p = if p0 <= prev.start {
        prev.start
    } else {
        let mut q = p0;
        while q < prev.end && !(d.at(q) == SP || d.at(q) == NL) {
            q += 1;
        }
        if q < prev.end {
            q + 1
        } else {
            u.start
        }
    };
    if u.end - p > cfg.max_chars {
        u.start
    } else {
        p
    }
}

/// The open chunk: its span, first unit's section, and content chars per section in order of
/// first appearance.
struct Open {
    start: usize,
    end: usize,
    first_section: usize,
    content: Vec<(usize, usize)>,
}

impl Open {
    fn new(start: usize, u: &Unit) -> Self {
        let mut o = Open {
            start,
            end: u.end,
            first_section: u.section,
            content: Vec::new(),
        };
        o.count(u);
        o
    }
    fn count(&mut self, u: &Unit) {
        if u.kind == Kind::Heading {
            return;
        }
        match self.content.iter_mut().find(|(s, _)| *s == u.section) {
            Some(entry) => entry.1 += u.end - u.start,
            None => self.content.push((u.section, u.end - u.start)),
        }
    }
    /// The section with the most content chars (the earliest on ties).
    fn span(&self) -> Span {
        let mut best: Option<(usize, usize)> = None;
        for &(s, n) in &self.content {
            if best.is_none_or(|(_, m)| n > m) {
                best = Some((s, n));
            }
        }
        Span {
            start: self.start,
            end: self.end,
            section: best.map_or(self.first_section, |(s, _)| s),
        }
    }
}

/// Packs units greedily into chunks (SPEC.md, "Chunk").
pub fn chunk(d: &Doc, cfg: &ChunkConfig) -> (Vec<Section>, Vec<Span>) {
    let (sections, units) = units(d, cfg);
    let units = split_long(d, units, cfg.max_chars - cfg.overlap_chars);
    let mut spans = Vec::new();
    let mut cur: Option<Open> = None;
    for (i, u) in units.iter().enumerate() {
        match cur.as_mut() {
            None => cur = Some(Open::new(u.start, u)),
            Some(c) => {
                let heading_break = u.kind == Kind::Heading
                    && (c.end - c.start >= cfg.min_chars
                        || sections[u.section].kind != sections[units[i - 1].section].kind);
                if !heading_break && u.end - c.start <= cfg.max_chars {
                    c.end = u.end;
                    c.count(u);
                } else {
                    spans.push(c.span());
                    let start = if heading_break {
                        u.start
                    } else {
                        overlap_start(d, &units[i - 1], u, cfg)
                    };
                    *c = Open::new(start, u);
                }
            }
        }
    }
    if let Some(c) = cur {
        spans.push(c.span());
    }
    (sections, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, overlap: usize, min: usize) -> ChunkConfig {
        ChunkConfig {
            max_chars: max,
            overlap_chars: overlap,
            min_chars: min,
            clause_headings: true,
            mark_boilerplate: true,
        }
    }

    fn para(words: usize, seed: usize) -> String {
        (0..words)
            .map(|i| format!("w{}", (i * 7 + seed) % 97))
            .collect::<Vec<_>>()
            .join(" ")
            + "."
    }

    #[test]
    fn chunks_are_slices_with_section_paths() {
        let text = format!(
            "# 5 Procedures\n## 5.1 General\n{}\n\n## 5.2 Timers\n{}",
            para(20, 1),
            para(20, 2)
        );
        let d = Doc::new(&text);
        let (sections, spans) = chunk(&d, &cfg(1000, 50, 50));
        assert_eq!(spans.len(), 2);
        // The heading-only section 5 is shorter than min_chars, so it joins 5.1's chunk.
        assert!(d
            .slice(spans[0].start, spans[0].end)
            .starts_with("# 5 Procedures\n## 5.1 General\nw"));
        assert_eq!(sections[spans[0].section].path, vec!["5 Procedures", "5.1 General"]);
        assert_eq!(sections[spans[1].section].path, vec!["5 Procedures", "5.2 Timers"]);
        assert_eq!(sections[spans[1].section].heading, "5.2 Timers");
    }

    #[test]
    fn long_paragraphs_split_within_budget_with_overlap() {
        let text = format!("## 1 A\n{}", para(400, 3));
        let d = Doc::new(&text);
        let (_, spans) = chunk(&d, &cfg(300, 60, 50));
        assert!(spans.len() > 3);
        assert!(d.slice(spans[0].start, spans[0].end).starts_with("## 1 A\nw"));
        for w in spans.windows(2) {
            assert!(w[0].end - w[0].start <= 300);
            assert!(w[1].start < w[0].end, "consecutive pieces overlap");
            assert!(w[0].end - w[1].start <= 60);
            let c = d.at(w[1].start - 1);
            assert!(c == ' ' as u32 || c == '\n' as u32, "overlap starts at a word");
        }
    }

    #[test]
    fn tables_stay_whole() {
        let rows: Vec<String> = (0..40).map(|i| format!("| row {i} | value {i} |")).collect();
        let text = format!("## 1 T\n{}\n\n{}\n\n{}", para(10, 1), rows.join("\n"), para(10, 2));
        let d = Doc::new(&text);
        let (_, spans) = chunk(&d, &cfg(200, 20, 10));
        let table = spans
            .iter()
            .find(|s| d.slice(s.start, s.end).contains("| row 0 |"))
            .unwrap();
        let t = d.slice(table.start, table.end);
        assert!(t.contains("| row 39 | value 39 |"), "{t}");
    }

    #[test]
    fn wide_documents_count_code_points() {
        let text = "## 1 Été\nÇa marche très bien ici.\n\n## 2 Ñ\nOtra sección aquí.";
        let d = Doc::new(text);
        let (_, spans) = chunk(&d, &cfg(1000, 0, 10));
        let chars: Vec<char> = text.chars().collect();
        for s in &spans {
            assert_eq!(
                d.slice(s.start, s.end),
                chars[s.start..s.end].iter().collect::<String>()
            );
        }
        assert_eq!(spans.last().unwrap().end, chars.len());
    }
}
