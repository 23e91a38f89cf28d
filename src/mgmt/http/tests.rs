//! Unit tests of what every endpoint shares: timestamps, the bound on a body's JSON values.
use super::*;

#[test]
fn timestamps_read_as_rabbitmq_writes_them() {
    assert_eq!(
        timestamp(1_796_198_292_129),
        "2026-12-02T07:58:12.129+00:00"
    );
    assert_eq!(timestamp(0), "1970-01-01T00:00:00.000+00:00");
}

/// Values are counted by the structure around them, never inside a string: a published
/// payload is one value, whatever brackets and commas (or escaped quotes) it holds.
#[test]
fn a_body_is_weighed_by_its_values_not_its_strings() {
    // The array and its first element, then one more value per comma.
    let fits = format!("[{}0]", "0,".repeat(MAX_BODY_JSON_VALUES - 2));
    assert!(check_json_values(fits.as_bytes()).is_ok());
    let many = format!("[{}0]", "0,".repeat(MAX_BODY_JSON_VALUES - 1));
    assert!(check_json_values(many.as_bytes()).is_err());
    // A string ending in an escaped backslash ends at its quote: what follows counts.
    let after = format!(r#"["\\", {}0]"#, "0,".repeat(MAX_BODY_JSON_VALUES));
    assert!(check_json_values(after.as_bytes()).is_err());
    let text = format!(
        r#"{{"payload": "{}\"],{{", "n": 1}}"#,
        "[{,".repeat(MAX_BODY_JSON_VALUES)
    );
    assert!(check_json_values(text.as_bytes()).is_ok());
    let parsed: serde_json::Value = parse_json(text.as_bytes()).unwrap();
    assert_eq!(parsed["n"], 1);
    let nested = "[".repeat(MAX_BODY_JSON_VALUES + 1);
    assert!(check_json_values(nested.as_bytes()).is_err());
}
