//! The words of SQL text: how PostgreSQL folds identifiers, decodes `U&` escapes and quotes
//! them again, and which words are reserved.
//!
//! Shared by the analysis (matching names to guards), the rewrite (quoting the columns it adds)
//! and the statement shapes (telling a keyword from a name).

use sqlparser::ast::Ident;

/// `\XXXX`, `\+XXXXXX` and `\\` of a `U&` identifier; `None` when malformed.
pub(super) fn decode_unicode_escapes(s: &str) -> Option<String> {
    decode_unicode_escapes_with(s, '\\')
}

/// The escapes of a `U&` identifier with escape character `esc` (`\` unless a `UESCAPE`
/// clause names another): `escXXXX`, `esc+XXXXXX`, `escesc`, and UTF-16 surrogate pairs
/// written as two escapes, as PostgreSQL decodes them. `None` when malformed (PostgreSQL
/// rejects the text) or when `esc` is not one PostgreSQL allows.
pub(super) fn decode_unicode_escapes_with(s: &str, esc: char) -> Option<String> {
    if esc.is_ascii_hexdigit() || matches!(esc, '+' | '\'' | '"') || esc.is_whitespace() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    // The first half of a surrogate pair, waiting for its second.
    let mut high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != esc {
            if high.is_some() {
                return None;
            }
            out.push(c);
            continue;
        }
        let digits = match chars.peek() {
            Some(&d) if d == esc && high.is_none() => {
                chars.next();
                out.push(esc);
                continue;
            }
            Some('+') => {
                chars.next();
                6
            }
            _ => 4,
        };
        let hex: String = (0..digits).filter_map(|_| chars.next()).collect();
        if hex.len() != digits || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let code = u32::from_str_radix(&hex, 16).ok()?;
        let code = match (high.take(), code) {
            (None, 0xD800..=0xDBFF) => {
                high = Some(code);
                continue;
            }
            (Some(h), 0xDC00..=0xDFFF) => 0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00),
            (Some(_), _) | (None, 0xDC00..=0xDFFF) | (None, 0) => return None,
            (None, c) => c,
        };
        out.push(char::from_u32(code)?);
    }
    high.is_none().then_some(out)
}

/// PostgreSQL's identifier folding: unquoted names fold to lower case (ASCII only).
pub(super) fn fold(value: &str, quote_style: Option<char>) -> String {
    match quote_style {
        Some(_) => value.to_string(),
        None => value.to_ascii_lowercase(),
    }
}

/// An identifier as PostgreSQL names it: folded unless quoted.
pub(super) fn fold_ident(i: &Ident) -> String {
    fold(&i.value, i.quote_style)
}

/// An identifier as the client wrote it (quoted again when it was quoted).
pub(super) fn written(i: &Ident) -> String {
    match i.quote_style {
        Some(q) => {
            let qq: String = [q, q].iter().collect();
            format!("{q}{}{q}", i.value.replace(q, &qq))
        }
        None => i.value.clone(),
    }
}

/// True when `word` (any case) is one of PostgreSQL's reserved or type/function-name keywords.
pub(super) fn is_reserved(word: &str) -> bool {
    let w = word.as_bytes();
    // Most words are names: most are told apart by their length and first letter alone.
    let Some(&first) = w.first() else {
        return false;
    };
    let letter = first.to_ascii_lowercase().wrapping_sub(b'a');
    if w.len() > LONGEST_RESERVED || letter >= 26 || RESERVED_STARTS[w.len()] & (1 << letter) == 0 {
        return false;
    }
    if w.len() > 16 {
        return RESERVED
            .iter()
            .any(|k| k.len() > 16 && k.as_bytes().eq_ignore_ascii_case(w));
    }
    RESERVED_KEYS.binary_search(&reserved_key(w)).is_ok()
}

/// A word of at most 16 bytes as a number that sorts as the word does (ASCII lowercase,
/// big-endian, zero-padded: no word holds a zero byte). Only the first 16 bytes count.
const fn reserved_key(w: &[u8]) -> u128 {
    let mut key = 0u128;
    let mut i = 0;
    while i < 16 {
        key <<= 8;
        if i < w.len() {
            key |= w[i].to_ascii_lowercase() as u128;
        }
        i += 1;
    }
    key
}

/// [`RESERVED`] as [`reserved_key`]s, in the same (sorted) order: a binary search compares
/// numbers, not strings.
const RESERVED_KEYS: [u128; RESERVED.len()] = {
    let mut keys = [0u128; RESERVED.len()];
    let mut i = 0;
    while i < RESERVED.len() {
        keys[i] = reserved_key(RESERVED[i].as_bytes());
        i += 1;
    }
    keys
};

/// Length of the longest word in [`RESERVED`] (`current_timestamp`).
const LONGEST_RESERVED: usize = 17;

/// For each length, one bit per first letter (`a` = bit 0) of the [`RESERVED`] words of that
/// length.
const RESERVED_STARTS: [u32; LONGEST_RESERVED + 1] = {
    let mut starts = [0u32; LONGEST_RESERVED + 1];
    let mut i = 0;
    while i < RESERVED.len() {
        let w = RESERVED[i].as_bytes();
        starts[w.len()] |= 1 << (w[0] - b'a');
        i += 1;
    }
    starts
};

/// PostgreSQL's reserved and type/function-name keywords (sorted): not usable as a bare column
/// name in a `SET` list.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// True when `name` as given (lower case) is one of the [`RESERVED`] words: a column name
/// the rewrite must quote.
pub(super) fn is_reserved_lowercase(name: &str) -> bool {
    RESERVED.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_table_is_sorted_and_finds_its_words_in_any_case() {
        assert!(
            RESERVED.windows(2).all(|w| w[0] < w[1]),
            "sorted for binary search"
        );
        assert_eq!(
            RESERVED.iter().map(|w| w.len()).max(),
            Some(LONGEST_RESERVED)
        );
        assert!(
            RESERVED_KEYS.windows(2).all(|w| w[0] < w[1]),
            "keys sorted as the words, none cut to a duplicate"
        );
        for w in RESERVED {
            assert!(
                is_reserved(w) && is_reserved(&w.to_ascii_uppercase()),
                "{w}"
            );
        }
        assert!(is_reserved("WHERE") && is_reserved("Current_Timestamp") && is_reserved("as"));
        assert!(!is_reserved("current_timestamps") && !is_reserved("abalance") && !is_reserved(""));
    }

    #[test]
    fn unicode_escapes_decode_as_postgresql_does() {
        assert_eq!(decode_unicode_escapes("\\0069tem").as_deref(), Some("item"));
        assert_eq!(
            decode_unicode_escapes("it\\+000065m").as_deref(),
            Some("item")
        );
        assert_eq!(decode_unicode_escapes("a\\\\b").as_deref(), Some("a\\b"));
        assert_eq!(
            decode_unicode_escapes("\\D83D\\DE00").as_deref(),
            Some("\u{1F600}")
        );
        assert_eq!(
            decode_unicode_escapes_with("!0069tem", '!').as_deref(),
            Some("item")
        );
        assert_eq!(
            decode_unicode_escapes_with("a!!b\\", '!').as_deref(),
            Some("a!b\\")
        );
        for bad in [
            "\\006", "\\00g9", "\\D83D", "\\D83Dx", "\\DE00", "\\0000", "\\+11000",
        ] {
            assert_eq!(decode_unicode_escapes(bad), None, "{bad}");
        }
        for esc in ['a', 'F', '0', '+', '\'', '"', ' '] {
            assert_eq!(decode_unicode_escapes_with("x", esc), None, "{esc}");
        }
    }
}
