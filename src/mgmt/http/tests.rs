//! Unit tests of what every endpoint shares: timestamps.
use super::*;

#[test]
fn timestamps_read_as_rabbitmq_writes_them() {
    assert_eq!(
        timestamp(1_796_198_292_129),
        "2026-12-02T07:58:12.129+00:00"
    );
    assert_eq!(timestamp(0), "1970-01-01T00:00:00.000+00:00");
}
