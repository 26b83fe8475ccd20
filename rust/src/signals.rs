//! Quality signals and the complexity score (SPEC.md, "Signals"). All ratios are integer
//! basis points so both engines agree to the last bit.
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Signals {
    pub n_chars: usize,
    pub n_words: usize,
    pub alpha_ratio: f64,
    pub table_density: f64,
    pub acronym_density: f64,
    pub complexity: f64,
}

const STRIP: &[u8] = b"()[]{}<>,.;:!?\"'";

fn is_acronym(word: &[u8]) -> bool {
    // Most words start with a lowercase letter, which no acronym or stripped character does.
    if word[0].is_ascii_lowercase() {
        return false;
    }
    let mut s = 0;
    let mut e = word.len();
    while s < e && STRIP.contains(&word[s]) {
        s += 1;
    }
    while e > s && STRIP.contains(&word[e - 1]) {
        e -= 1;
    }
    let w = &word[s..e];
    (2..=12).contains(&w.len())
        && w.iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'-')
        && w.iter().filter(|b| b.is_ascii_uppercase()).count() >= 2
}

fn bp(num: usize, den: usize) -> u64 {
    if den == 0 {
        0
    } else {
        (num as u64 * 10_000) / den as u64
    }
}

pub fn signals(text: &str, n_chars: usize, max_chars: usize) -> Signals {
    // One pass over the bytes. Separators, letters and acronym characters are ASCII; a line's
    // length in code points counts the bytes that do not continue a UTF-8 sequence.
    let bytes = text.as_bytes();
    let (mut letters, mut seps, mut n_words, mut acronyms, mut table_chars) = (0, 0, 0, 0, 0);
    let (mut word_start, mut line_is_table, mut at_line_start) = (None::<usize>, false, true);
    for (i, &b) in bytes.iter().enumerate() {
        if at_line_start {
            line_is_table = b == b'|';
            at_line_start = false;
        }
        if b == b' ' || b == b'\n' {
            seps += 1;
            if let Some(ws) = word_start.take() {
                n_words += 1;
                acronyms += is_acronym(&bytes[ws..i]) as usize;
            }
            if b == b'\n' {
                at_line_start = true;
            } else if line_is_table {
                table_chars += 1;
            }
            continue;
        }
        if word_start.is_none() {
            word_start = Some(i);
        }
        letters += b.is_ascii_alphabetic() as usize;
        table_chars += (line_is_table && (b & 0xC0) != 0x80) as usize;
    }
    if let Some(ws) = word_start {
        n_words += 1;
        acronyms += is_acronym(&bytes[ws..]) as usize;
    }
    let word_chars = n_chars - seps;
    let len_bp = bp(n_chars, max_chars).min(10_000);
    let table_bp = bp(table_chars, n_chars);
    let acr_bp = bp(acronyms, n_words);
    let wl_bp = bp(word_chars, 12 * n_words).min(10_000);
    let complexity_bp = (35 * len_bp + 25 * table_bp + 25 * (4 * acr_bp).min(10_000) + 15 * wl_bp) / 100;
    Signals {
        n_chars,
        n_words,
        alpha_ratio: bp(letters, n_chars) as f64 / 10_000.0,
        table_density: table_bp as f64 / 10_000.0,
        acronym_density: acr_bp as f64 / 10_000.0,
        complexity: complexity_bp as f64 / 10_000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_acronyms_tables_and_letters() {
        let text = "The UE (NG-RAN) uses 5GC, not I or A1.\n| a | b |";
        let s = signals(text, text.chars().count(), 100);
        assert_eq!((s.n_chars, s.n_words), (48, 14));
        assert_eq!(s.acronym_density, (3 * 10_000 / 14) as f64 / 10_000.0);
        assert_eq!(s.table_density, (9 * 10_000 / 48) as f64 / 10_000.0);
        assert!(s.complexity > 0.0 && s.complexity <= 1.0);
    }

    #[test]
    fn empty_text_is_all_zero() {
        let s = signals("", 0, 100);
        assert_eq!((s.n_words, s.alpha_ratio, s.complexity), (0, 0.0, 0.0));
    }
}
