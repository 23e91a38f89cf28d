//! Regular expressions as RabbitMQ's `re` (PCRE) reads permission and policy patterns.
//!
//! Nearly every pattern compiles with Rust's `regex`, which runs in linear time: those are
//! matched by it, as before. A pattern it refuses for using lookaround or backreferences
//! (`^(?!amq\.).*` is a common one: everything but the `amq.` names) is compiled by
//! `fancy-regex`, a backtracking engine, under bounds that keep what an operator's pattern
//! can cost small, since clients choose the names it is matched against (on every declare,
//! and for topic permissions on every new routing key):
//!
//! - at most [`MAX_BACKTRACKING_PATTERN_BYTES`] of pattern, no subroutine calls (inlined at
//!   compile time, they can double the program with every level), counted repetitions
//!   nested to at most [`MAX_NESTED_REPEATS`] iterations, and a compiled program of at most
//!   [`MAX_PROGRAM_INSNS`] instructions;
//! - at most [`MAX_BACKTRACK_STEPS`] backtracking steps per match; a match that would take
//!   more counts as none, as Erlang's `re:run` answers `nomatch` past its match limit.

use fancy_regex::{BytesMode, Expr};

/// The compiled size one pattern may reach in the linear engine. Patterns come from
/// operators, not clients, but a mistyped one must not eat the broker's memory.
const MAX_PATTERN_COMPILED_BYTES: usize = 1 << 20;

/// The longest pattern taken by the backtracking engine (lookaround, backreferences).
pub const MAX_BACKTRACKING_PATTERN_BYTES: usize = 4096;

/// Backtracking steps one match may take. Names are at most 255 bytes.
pub const MAX_BACKTRACK_STEPS: usize = 100_000;

/// How many iterations counted repetitions (`{n}`, `{n,m}`) nesting in one another may
/// multiply to in a backtracking pattern: the engine runs a repetition's first `n`
/// iterations without counting them as backtracking, so `(?:(?:\1){1000000}){1000000}`
/// would otherwise run for ever within the step bound. PCRE caps one count at 65,535.
pub const MAX_NESTED_REPEATS: usize = 10_000;

/// Instructions a compiled backtracking pattern may hold.
pub const MAX_PROGRAM_INSNS: usize = 1 << 16;

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
pub enum Matcher {
    /// Rust's `regex`: linear time.
    Linear(regex::bytes::Regex),
    /// `fancy-regex`, for lookaround and backreferences, within the bounds above.
    Backtracking(fancy_regex::Regex),
}

impl Matcher {
    /// Compiles `source`, or says why not (the linear engine's reason when the backtracking
    /// one has no more to say).
    pub fn compile(source: &str, classes: Classes) -> Result<Matcher, String> {
        let linear = regex::bytes::RegexBuilder::new(source)
            .unicode(classes == Classes::Unicode)
            .size_limit(MAX_PATTERN_COMPILED_BYTES)
            .build();
        let linear_error = match linear {
            Ok(r) => return Ok(Matcher::Linear(r)),
            Err(e) => e.to_string(),
        };
        // Only what the linear engine lacks goes to the backtracking one.
        let tree = match Expr::parse_tree(source) {
            Ok(tree) if tree.backrefs.is_empty() && !has_lookaround(&tree.expr) => {
                return Err(linear_error);
            }
            Ok(tree) => tree,
            Err(_) => return Err(linear_error),
        };
        if source.len() > MAX_BACKTRACKING_PATTERN_BYTES {
            return Err(format!(
                "a pattern with lookaround or backreferences may be at most {MAX_BACKTRACKING_PATTERN_BYTES} bytes"
            ));
        }
        if tree.contains_subroutines {
            return Err("subroutine calls are not supported".into());
        }
        if nested_repeats(&tree.expr) > MAX_NESTED_REPEATS {
            return Err(format!(
                "counted repetitions nest past {MAX_NESTED_REPEATS} iterations"
            ));
        }
        fancy_regex::RegexBuilder::new(source)
            .bytes_mode(match classes {
                Classes::Ascii => BytesMode::Ascii,
                Classes::Unicode => BytesMode::UnicodeBytes,
            })
            .delegate_size_limit(MAX_PATTERN_COMPILED_BYTES)
            .max_prog_size(MAX_PROGRAM_INSNS)
            .backtrack_limit(MAX_BACKTRACK_STEPS)
            .build()
            .map(Matcher::Backtracking)
            .map_err(|e| e.to_string())
    }

    /// An unanchored search of `name`, as `re:run` does; a match past the backtracking
    /// bound is none.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Linear(r) => r.is_match(name.as_bytes()),
            Matcher::Backtracking(r) => r.is_match(name.as_bytes()).unwrap_or(false),
        }
    }
}

/// Whether the expression holds a lookaround. (The parser bounds nesting, so this
/// recursion is bounded too.)
fn has_lookaround(expr: &Expr) -> bool {
    matches!(expr, Expr::LookAround(..)) || expr.children_iter().any(has_lookaround)
}

/// The most iterations counted repetitions nested in one another multiply to along any
/// path of the expression (an unbounded one counts its minimum).
fn nested_repeats(expr: &Expr) -> usize {
    let inner = expr.children_iter().map(nested_repeats).max().unwrap_or(1);
    match expr {
        Expr::Repeat { lo, hi, .. } => {
            let count = if *hi == usize::MAX { *lo } else { *hi };
            count.max(1).saturating_mul(inner)
        }
        _ => inner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascii(source: &str) -> Result<Matcher, String> {
        Matcher::compile(source, Classes::Ascii)
    }

    #[test]
    fn patterns_the_linear_engine_takes_stay_with_it() {
        for source in [".*", "^amq\\.", "^(bob|amq\\.default)", "(?i)^Q", "(?u)^q"] {
            assert!(matches!(ascii(source), Ok(Matcher::Linear(_))), "{source}");
        }
        assert!(matches!(
            ascii("^(?!amq\\.).*"),
            Ok(Matcher::Backtracking(_))
        ));
        assert!(matches!(ascii("^(a)\\1$"), Ok(Matcher::Backtracking(_))));
        assert!(ascii("(").is_err());
    }

    #[test]
    fn lookaround_and_backreferences_match_as_in_pcre() {
        let not_amq = ascii("^(?!amq\\.).*").unwrap();
        assert!(not_amq.matches("orders"));
        assert!(!not_amq.matches("amq.gen-1"));
        assert!(!ascii("^.*(?<!-dlq)$").unwrap().matches("orders-dlq"));
        assert!(ascii("^(a)\\1$").unwrap().matches("aa"));
    }

    /// What an operator's pattern may cost stays small: each of these ran for hours or
    /// took gigabytes unbounded.
    #[test]
    fn hostile_backtracking_patterns_are_refused_or_bounded() {
        let doubling: String = std::iter::once("(a)".to_owned())
            .chain((1..30).map(|i| format!("(\\g<{i}>\\g<{i}>)")))
            .collect();
        assert!(ascii(&doubling).is_err(), "subroutine calls");
        assert!(
            ascii("()(?:(?:\\1){1000000000}){1000000000}").is_err(),
            "nested counts"
        );
        assert!(
            ascii(&format!("(?=a){}", "a".repeat(5000))).is_err(),
            "length"
        );
        let runaway = ascii("^(?=.)(a|a?)+(?=b)b$").unwrap();
        assert!(!runaway.matches(&"a".repeat(255)), "steps are bounded");
    }
}
