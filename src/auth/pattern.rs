//! Regular expressions as RabbitMQ's `re` (PCRE) reads permission and policy patterns,
//! matched in linear time by Rust's `regex`.
//!
//! PCRE has lookaround, which `regex` lacks, and operators use it in one idiom above all:
//! lookaheads right after a leading `^`, to grant or apply to every name but some
//! (`^(?!amq\.).*`, `^(?!amq\.|tmp-)`). That idiom is read here exactly: anchored at the
//! start, `^(?!X)(?=Y)R` matches a name where `X` does not match at the start, `Y` does,
//! and `R` does from the start, each a linear regex of its own. Lookaround anywhere else,
//! and backreferences, stay refused: a backtracking engine would let an operator's pattern,
//! matched against names clients choose, cost without bound (a review found patterns of a
//! hundred bytes that ran for hours under fancy-regex's step limit).

/// The compiled size one pattern may reach. Patterns come from operators, not clients, but
/// a mistyped one must not eat the broker's memory.
const MAX_PATTERN_COMPILED_BYTES: usize = 1 << 20;

/// Leading lookaheads one pattern may have.
const MAX_LEADING_LOOKAHEADS: usize = 16;

/// How character classes read bytes past ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classes {
    /// As `re:run` without its `unicode` option (permissions): over bytes, `.`, `\w`, `\d`
    /// and case folding ASCII-only.
    Ascii,
    /// Unicode-aware, as policies have always been matched here.
    Unicode,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Lookaheads at the start: each must match there (`(?=`) or must not (`(?!`).
    lookaheads: Vec<(bool, regex::bytes::Regex)>,
    /// The rest: searched anywhere when there is no leading lookahead, else from the start.
    rest: regex::bytes::Regex,
}

impl Matcher {
    /// Compiles `source`, or says why not.
    pub fn compile(source: &str, classes: Classes) -> Result<Matcher, String> {
        let build = |pattern: &str| {
            regex::bytes::RegexBuilder::new(pattern)
                .unicode(classes == Classes::Unicode)
                .size_limit(MAX_PATTERN_COMPILED_BYTES)
                .build()
                .map_err(|e| e.to_string())
        };
        // Same characters, other meanings: refused rather than read otherwise.
        if !classes_read_alike(source) {
            return Err(
                "a character class holds `[` (other than [:name:]), `&&`, `--` or `~~`, \
                 which PCRE and this broker read differently"
                    .into(),
            );
        }
        // PCRE's `$` (without multiline) also matches before a final newline: `^q$` grants
        // `q\n` in RabbitMQ, and a policy `^q$` applies to it. A pattern that sets flags
        // changing `$` or `.` is left as it is.
        let converted = pcre_dollars(source);
        let source = converted.as_deref().unwrap_or(source);
        let whole = match build(source) {
            Ok(rest) => {
                return Ok(Matcher {
                    lookaheads: Vec::new(),
                    rest,
                });
            }
            Err(e) => e,
        };
        let Some((lookaheads, rest)) = leading_lookaheads(source) else {
            return Err(whole);
        };
        let lookaheads = lookaheads
            .into_iter()
            .map(|(positive, body)| {
                let body = pcre_dollars(body)
                    .ok_or("a lookahead with flags (?m) or (?s) is not supported".to_owned())?;
                Ok((positive, build(&format!("^(?:{body})"))?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let rest = build(&format!("^(?:{rest})"))?;
        Ok(Matcher { lookaheads, rest })
    }

    /// An unanchored search of `name`, as `re:run` does.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.lookaheads
            .iter()
            .all(|(positive, r)| r.is_match(name) == *positive)
            && self.rest.is_match(name)
    }
}

/// Splits `^(?!X)(?=Y)R` into its lookaheads (`true` for `(?=`) and `R`; `None` if the
/// pattern does not start so.
fn leading_lookaheads(source: &str) -> Option<(Vec<(bool, &str)>, &str)> {
    let mut rest = source.strip_prefix('^')?;
    let mut found = Vec::new();
    while found.len() < MAX_LEADING_LOOKAHEADS {
        let positive = match rest.get(..3) {
            Some("(?=") => true,
            Some("(?!") => false,
            _ => break,
        };
        let close = closing_paren(rest)?;
        found.push((positive, &rest[3..close]));
        rest = &rest[close + 1..];
    }
    // `^(?!a)b|c` is `^(?!a)b` or `c` anywhere: not this idiom.
    if found.is_empty() || alternates_at_top(rest)? {
        return None;
    }
    Some((found, rest))
}

/// Whether `pattern` has a `|` outside every group (`None` if it is unbalanced).
fn alternates_at_top(pattern: &str) -> Option<bool> {
    let bar = walk(pattern.as_bytes(), |piece| {
        matches!(
            piece,
            Piece::Byte {
                byte: b'|',
                depth: 0,
                ..
            }
        )
        .then_some(())
    });
    bar.ok().map(|found| found.is_some())
}

/// The index of the `)` that closes the group opening at `pattern[0]`, past escapes and
/// character classes (`[)]`, `[]]`, `[[:alpha:]]`).
fn closing_paren(pattern: &str) -> Option<usize> {
    let close = walk(pattern.as_bytes(), |piece| match piece {
        Piece::Byte {
            at,
            byte: b')',
            depth: 0,
        } => Some(at),
        _ => None,
    });
    close.ok().flatten()
}

/// What [`walk`] shows of a pattern: a byte outside escapes and character classes, with the
/// depth of the groups it is in (after it, for a parenthesis), or a whole class.
enum Piece {
    Byte { at: usize, byte: u8, depth: usize },
    Class { open: usize, close: usize },
}

/// Walks `pattern` as PCRE reads its structure, past escapes, until `visit` returns
/// something. `Err` if a class is not closed or a `)` closes no group.
fn walk<T>(pattern: &[u8], mut visit: impl FnMut(Piece) -> Option<T>) -> Result<Option<T>, ()> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < pattern.len() {
        let piece = match pattern[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'[' => {
                let close = class_end(pattern, i).ok_or(())?;
                let open = std::mem::replace(&mut i, close);
                Piece::Class { open, close }
            }
            byte => {
                match byte {
                    b'(' => depth += 1,
                    b')' => depth = depth.checked_sub(1).ok_or(())?,
                    _ => {}
                }
                Piece::Byte { at: i, byte, depth }
            }
        };
        if let Some(found) = visit(piece) {
            return Ok(Some(found));
        }
        i += 1;
    }
    Ok(None)
}

/// Whether every character class of `pattern` reads the same in PCRE and in Rust's `regex`:
/// in PCRE a `[` inside a class is a literal unless it opens `[:name:]`, and `&&`, `--`,
/// `~~` are literals; in `regex` they nest classes and make set operations.
fn classes_read_alike(pattern: &str) -> bool {
    class_contents_alike(pattern.as_bytes())
}

/// Every class's contents hold nothing the two engines read differently. (A pattern whose
/// classes or groups do not close is left to `regex`, which refuses it with its reason.)
fn class_contents_alike(bytes: &[u8]) -> bool {
    let differ = walk(bytes, |piece| match piece {
        Piece::Class { open, close } if !class_alike(&bytes[open + 1..close]) => Some(()),
        _ => None,
    });
    !matches!(differ, Ok(Some(())))
}

/// A class's contents (between its brackets) read alike: no `&&`, `--`, `~~`, and no `[`
/// but those of `[:name:]`.
fn class_alike(contents: &[u8]) -> bool {
    let mut i = 0;
    while i < contents.len() {
        match contents[i] {
            b'\\' => i += 1,
            b'[' => match posix_class_end(contents, i) {
                Some(end) => i = end,
                None => return false,
            },
            c @ (b'&' | b'-' | b'~') if contents.get(i + 1) == Some(&c) => return false,
            _ => {}
        }
        i += 1;
    }
    true
}

/// The index of the `]` that closes the class opening at `bytes[open]`.
fn class_end(bytes: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if bytes.get(i) == Some(&b'^') {
        i += 1;
    }
    // A `]` first in a class is a literal.
    if bytes.get(i) == Some(&b']') {
        i += 1;
    }
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => {
                if let Some(end) = posix_class_end(bytes, i) {
                    i = end;
                }
            }
            b']' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// If `bytes[open]` opens a POSIX class (`[:alpha:]`, `[.x.]`, `[=x=]`) as PCRE reads one,
/// the index of its closing `]`: PCRE gives up at a `]` or another `[` of the same kind
/// before the terminator.
fn posix_class_end(bytes: &[u8], open: usize) -> Option<usize> {
    let kind = *bytes.get(open + 1)?;
    if !matches!(kind, b':' | b'.' | b'=') {
        return None;
    }
    let mut i = open + 2;
    while i + 1 < bytes.len() {
        match bytes[i] {
            b'\\' if matches!(bytes[i + 1], b']' | b'\\') => i += 1,
            b'[' if bytes[i + 1] == kind => return None,
            c if c == kind && bytes[i + 1] == b']' => return Some(i + 1),
            b']' => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

/// A lookahead's body with each `$` outside classes and escapes made PCRE's: without
/// multiline, it also matches before a final newline (`(?:\n?\z)` here; nothing follows
/// a lookahead's `$` that could tell the difference but more pattern, which fails either
/// way). `None` if the body sets flags that change `$` or `.` (`(?m`, `(?s`).
fn pcre_dollars(body: &str) -> Option<String> {
    let bytes = body.as_bytes();
    let mut dollars = Vec::new();
    let flags_change_dollar = |at: usize| {
        bytes.get(at + 1) == Some(&b'?')
            && bytes[at + 2..]
                .iter()
                .take_while(|b| b.is_ascii_alphabetic() || **b == b'-')
                .any(|b| matches!(b, b'm' | b's'))
    };
    let refused = walk(bytes, |piece| match piece {
        Piece::Byte { at, byte: b'$', .. } => {
            dollars.push(at);
            None
        }
        Piece::Byte { at, byte: b'(', .. } if flags_change_dollar(at) => Some(()),
        _ => None,
    });
    if !matches!(refused, Ok(None)) {
        return None;
    }
    let mut out = String::with_capacity(body.len() + 8 * dollars.len());
    let mut from = 0;
    for at in dollars {
        out.push_str(&body[from..at]);
        out.push_str("(?:\\n?\\z)");
        from = at + 1;
    }
    out.push_str(&body[from..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascii(source: &str) -> Result<Matcher, String> {
        Matcher::compile(source, Classes::Ascii)
    }

    #[test]
    fn same_as_rabbitmq_leading_lookaheads_grant_all_but_what_they_exclude() {
        let not_amq = ascii("^(?!amq\\.).*").unwrap();
        assert!(not_amq.matches("orders"));
        assert!(!not_amq.matches("amq.gen-1"));
        let neither = ascii("^(?!amq\\.|tmp-)(?!(x|y)[)\\]]z)").unwrap();
        assert!(neither.matches("orders"));
        assert!(!neither.matches("tmp-1"));
        assert!(!neither.matches("x)z"));
        let only_app = ascii("^(?=app\\.)(?![[:digit:]])[a-z.]+$").unwrap();
        assert!(only_app.matches("app.orders"));
        assert!(!only_app.matches("app.Orders"));
        assert!(!only_app.matches("web.orders"));
        // The rest is matched from the start, as PCRE matches it after `^(?!X)`.
        // PCRE's `$` also matches before a final newline.
        let not_secret = ascii("^(?!secret$).*").unwrap();
        assert!(!not_secret.matches("secret\n"));
        assert!(!not_secret.matches("secret"));
        assert!(not_secret.matches("secrets"));
        assert!(
            ascii("^(?![$])").unwrap().matches("a"),
            "a class's $ is a literal"
        );
        let rest = ascii("^(?!a)b").unwrap();
        assert!(rest.matches("bc"));
        assert!(!rest.matches("cb"));
    }

    #[test]
    fn lookaround_elsewhere_and_backreferences_are_refused() {
        for source in [
            "(?!amq\\.).*",
            "^a(?!b)",
            "^(?<!x)y",
            "^(a)\\1$",
            "^(?!a(?!b))",
            "^(?!a",
            "^(?![)",
            "^(?!a)b|c",
            "^(?![[a]]).*",
            "^(?![[:])(x:]])",
            "^[a&&b]",
            "^(?!(?m)a$)",
        ] {
            assert!(ascii(source).is_err(), "{source}");
        }
    }

    /// Every prefix of patterns full of brackets, escapes and lookaheads compiles or is
    /// refused; none panics.
    #[test]
    fn truncated_and_odd_patterns_are_refused_not_panicked() {
        for source in [
            "^(?!a[]\\]b[[:alpha:]][^]x]|(?=c$))(?![[.a.][=b=]\\\\)$)d\\",
            "^(?!\u{e4}[\u{f6}-\u{fc}]$)(?=(?i)x)[[:",
            "^(?!(?m)$)(?s:.)$[$]\\$",
        ] {
            for end in (0..=source.len()).filter(|&e| source.is_char_boundary(e)) {
                let _ = Matcher::compile(&source[..end], Classes::Ascii);
                let _ = Matcher::compile(&source[..end], Classes::Unicode);
            }
        }
    }

    /// Same as RabbitMQ (PCRE without multiline): `$` matches at the end of the name or
    /// before a final newline, and nowhere else.
    #[test]
    fn a_dollar_also_matches_before_a_final_newline() {
        for classes in [Classes::Ascii, Classes::Unicode] {
            let exact = Matcher::compile("^q$", classes).unwrap();
            assert!(exact.matches("q"));
            assert!(exact.matches("q\n"));
            assert!(!exact.matches("q\n\n"));
            assert!(!exact.matches("q\nx"));
            assert!(!exact.matches("qq"));
            let rest = Matcher::compile("^(?!tmp)[a-z]+$", classes).unwrap();
            assert!(rest.matches("orders\n"));
            assert!(!rest.matches("tmpq\n"));
            let literal = Matcher::compile("^q\\$|^[$]$", classes).unwrap();
            assert!(literal.matches("q$") && literal.matches("$\n"));
            assert!(!literal.matches("q\n"));
        }
    }

    #[test]
    fn patterns_without_lookaround_match_as_before() {
        let plain = ascii("^(bob|amq\\.default)").unwrap();
        assert!(plain.matches("bob-queue"));
        assert!(!plain.matches("amq.direct"));
        assert!(ascii("q").unwrap().matches("my-q-1"), "unanchored");
        assert!(ascii("(?i)^Q").unwrap().matches("queue"));
    }
}
