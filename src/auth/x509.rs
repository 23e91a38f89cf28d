//! The subject of an X.509 certificate, for SASL EXTERNAL: the user name is the subject's
//! distinguished name written as RabbitMQ writes it (`CN=bob,O=Example,C=GB`: the RDNs in
//! reverse order, RFC 4514 escapes), or its common name.
//!
//! Only the path to the subject is decoded (certificate → tbsCertificate → subject), with
//! every length checked against what is left: the certificate has been verified against the
//! configured CA before this runs, but a parser of client-supplied bytes must be safe anyway.

/// One attribute of the subject: its short name (or dotted OID) and value.
pub type Attribute = (String, String);

/// The subject's attributes, RDN by RDN, in certificate order.
pub fn subject(cert: &[u8]) -> Option<Vec<Vec<Attribute>>> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let mut rest = tbs;
    // An explicit version ([0]) is optional; then serial, signature algorithm, issuer,
    // validity, and the subject.
    if rest.first() == Some(&0xA0) {
        rest = skip(rest)?;
    }
    for _ in 0..4 {
        rest = skip(rest)?;
    }
    let (name, _) = element(rest, SEQUENCE)?;
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (set, after) = element(rest, SET)?;
        rest = after;
        let mut rdn = Vec::new();
        let mut attrs = set;
        while !attrs.is_empty() {
            let (pair, after) = element(attrs, SEQUENCE)?;
            attrs = after;
            let (oid, value) = element(pair, OID)?;
            let (tag, body, _) = tlv(value)?;
            let text = directory_string(tag, body)?;
            rdn.push((oid_name(oid), text));
        }
        rdns.push(rdn);
    }
    Some(rdns)
}

/// The certificate's validity: its notBefore and notAfter, in seconds since the Unix epoch
/// (UTC), for the `certificate-expiration` health check.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = skip(rest)?;
    }
    // Serial number, signature algorithm, issuer; then the validity.
    for _ in 0..3 {
        rest = skip(rest)?;
    }
    let (validity, _) = element(rest, SEQUENCE)?;
    let (tag, not_before, rest) = tlv(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = tlv(rest)?;
    Some((not_before, time(tag, not_after)?))
}

/// An X.509 time in seconds since the Unix epoch: UTCTime (`YYMMDDHHMMSSZ`, years 1950 to
/// 2049 as RFC 5280 reads them) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |from: usize, n: usize| -> Option<i64> {
        let part = text.get(from..from + n)?;
        part.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, at) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(0, 2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (0x18, 15) => (digits(0, 4)?, 4),
        _ => return None,
    };
    if text.last() != Some(&b'Z') {
        return None;
    }
    let (month, day) = (digits(at, 2)?, digits(at + 2, 2)?);
    let (hour, minute, second) = (digits(at + 4, 2)?, digits(at + 6, 2)?, digits(at + 8, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The distinguished name as RabbitMQ writes it for `ssl_cert_login_from =
/// distinguished_name`: RDNs last to first, joined by commas, values escaped (RFC 4514).
pub fn distinguished_name(rdns: &[Vec<Attribute>]) -> String {
    let parts: Vec<String> = rdns
        .iter()
        .rev()
        .map(|rdn| {
            let attrs: Vec<String> = rdn
                .iter()
                .map(|(name, value)| format!("{name}={}", escape(value)))
                .collect();
            attrs.join("+")
        })
        .collect();
    parts.join(",")
}

/// The subject's common name (`ssl_cert_login_from = common_name`): as RabbitMQ's
/// `peer_cert_auth_name`, several CNs are joined with commas, unescaped.
pub fn common_name(rdns: &[Vec<Attribute>]) -> Option<String> {
    let names: Vec<&str> = rdns
        .iter()
        .flatten()
        .filter(|(name, _)| name == "CN")
        .map(|(_, v)| v.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// An attribute's value as text, decoded as RabbitMQ's `rabbit_cert_info` decodes it:
/// UTF8String as it is, TeletexString as Latin-1, BMPString as UCS-2, UniversalString as
/// UCS-4, and the ASCII types (printable, IA5, visible, numeric) as they are.
fn directory_string(tag: u8, body: &[u8]) -> Option<String> {
    let chars = |units: &mut dyn Iterator<Item = u32>| -> String {
        units
            .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    };
    Some(match tag {
        0x0C | 0x13 | 0x16 | 0x1A | 0x12 => String::from_utf8_lossy(body).into_owned(),
        0x14 => body.iter().map(|&b| char::from(b)).collect(),
        0x1E => chars(
            &mut body
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))),
        ),
        0x1C => chars(&mut body.chunks(4).map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_be_bytes(b)
        })),
        _ => return None,
    })
}

/// RabbitMQ's `escape_rdn_value` (RFC 4514): a leading space or `#`, a trailing space and
/// `"+,;<>\` get a backslash; every byte of the UTF-8 form below 32 or from 126 up is
/// written as `\XX` in hex (so `é` is `\C3\A9`). `=` is left as it is.
fn escape(value: &str) -> String {
    use std::fmt::Write;
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        if (first && (b == b' ' || b == b'#'))
            || (last && b == b' ')
            || matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
        {
            out.push('\\');
            out.push(char::from(b));
        } else if !(32..126).contains(&b) {
            let _ = write!(out, "\\{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// Splits one DER element off `data`: (tag, contents, what follows).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The contents of an element with this tag, and what follows it.
fn element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = tlv(data)?;
    (t == tag).then_some((body, rest))
}

fn skip(data: &[u8]) -> Option<&[u8]> {
    tlv(data).map(|(_, _, rest)| rest)
}

/// The short names RabbitMQ (Erlang's public_key) prints, else the dotted OID.
fn oid_name(oid: &[u8]) -> String {
    const KNOWN: &[(&[u8], &str)] = &[
        // RabbitMQ's names (`rabbit_cert_info:format_rdn`); any other is dotted.
        (&[0x55, 0x04, 0x04], "SN"),
        (&[0x55, 0x04, 0x2A], "GIVENNAME"),
        (&[0x55, 0x04, 0x2B], "INITIALS"),
        (&[0x55, 0x04, 0x2C], "GENERATIONQUALIFIER"),
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x08], "ST"),
        (&[0x55, 0x04, 0x0A], "O"),
        (&[0x55, 0x04, 0x0B], "OU"),
        (&[0x55, 0x04, 0x0C], "TITLE"),
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x05], "SERIALNUMBER"),
        (&[0x55, 0x04, 0x41], "PSEUDONYM"),
        (&[0x55, 0x04, 0x09], "STREET"),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19],
            "DC",
        ),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01],
            "UID",
        ),
        (
            &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01],
            "EMAILADDRESS",
        ),
    ];
    if let Some((_, name)) = KNOWN.iter().find(|(o, _)| *o == oid) {
        return (*name).to_owned();
    }
    // Dotted form: the first byte holds two arcs, the rest are base-128.
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        value = value.saturating_mul(128) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if arcs.is_empty() && i < oid.len() {
                arcs.push((value / 40).min(2));
                arcs.push(value - 40 * arcs[0]);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    let parts: Vec<String> = arcs.iter().map(u64::to_string).collect();
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Name with C=GB, O=Example, CN=bob, in a minimal certificate shape.
    fn certificate() -> Vec<u8> {
        fn seq(tag: u8, parts: &[Vec<u8>]) -> Vec<u8> {
            let body: Vec<u8> = parts.concat();
            let mut out = vec![tag, body.len() as u8];
            out.extend(body);
            out
        }
        let attr = |oid: &[u8], value: &str| {
            seq(
                SET,
                &[seq(
                    SEQUENCE,
                    &[
                        seq(OID, &[oid.to_vec()]),
                        seq(0x0C, &[value.as_bytes().to_vec()]),
                    ],
                )],
            )
        };
        let name = seq(
            SEQUENCE,
            &[
                attr(&[0x55, 0x04, 0x06], "GB"),
                attr(&[0x55, 0x04, 0x0A], "Example, Ltd"),
                attr(&[0x55, 0x04, 0x03], "bob"),
            ],
        );
        let filler = |tag: u8| vec![tag, 1, 0];
        let tbs = seq(
            SEQUENCE,
            &[
                vec![0xA0, 3, 2, 1, 2],
                filler(0x02),
                seq(SEQUENCE, &[]),
                seq(SEQUENCE, &[]),
                seq(SEQUENCE, &[]),
                name,
            ],
        );
        seq(SEQUENCE, &[tbs])
    }

    #[test]
    fn same_as_rabbitmq_dn_is_reversed_and_escaped() {
        let rdns = subject(&certificate()).expect("parses");
        assert_eq!(distinguished_name(&rdns), "CN=bob,O=Example\\, Ltd,C=GB");
        assert_eq!(common_name(&rdns).as_deref(), Some("bob"));
    }

    /// RabbitMQ's `escape_rdn_value`, case by case.
    #[test]
    fn same_as_rabbitmq_values_are_escaped_as_rfc_4514_and_bytes_past_ascii_in_hex() {
        for (value, escaped) in [
            ("a=b", "a=b"),
            ("#x", "\\#x"),
            (" x ", "\\ x\\ "),
            ("x#", "x#"),
            ("a\"b+c,d;e<f>g\\h", "a\\\"b\\+c\\,d\\;e\\<f\\>g\\\\h"),
            ("~", "\\7E"),
            ("é", "\\C3\\A9"),
            ("\u{1}", "\\01"),
        ] {
            assert_eq!(escape(value), escaped, "{value:?}");
        }
    }

    #[test]
    fn same_as_rabbitmq_strings_decode_by_their_type() {
        assert_eq!(directory_string(0x14, &[0x63, 0xE9]).as_deref(), Some("cé"));
        assert_eq!(
            directory_string(0x1E, &[0, 0x62, 0x03, 0xBB]).as_deref(),
            Some("bλ")
        );
        assert_eq!(
            directory_string(0x1C, &[0, 0, 0, 0x62, 0, 1, 0xF6, 0x00]).as_deref(),
            Some("b😀")
        );
        assert_eq!(directory_string(0x1A, b"vis").as_deref(), Some("vis"));
        assert_eq!(directory_string(0x04, b"octets"), None);
        assert_eq!(
            oid_name(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01]),
            "EMAILADDRESS"
        );
        assert_eq!(oid_name(&[0x55, 0x04, 0x05]), "SERIALNUMBER");
        let two = vec![
            vec![("CN".to_owned(), "a".to_owned())],
            vec![("CN".to_owned(), "b".to_owned())],
        ];
        assert_eq!(common_name(&two).as_deref(), Some("a,b"));
    }

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        let time_of =
            |tag: u8, text: &str| [vec![tag, text.len() as u8], text.as_bytes().to_vec()].concat();
        let body = [
            vec![0xA0, 3, 2, 1, 2],
            vec![0x02, 1, 7],
            vec![SEQUENCE, 0],
            vec![SEQUENCE, 0],
            {
                let times = [
                    time_of(0x17, "260101000000Z"),
                    time_of(0x18, "20491231235959Z"),
                ]
                .concat();
                [vec![SEQUENCE, times.len() as u8], times].concat()
            },
        ]
        .concat();
        let tbs = [vec![SEQUENCE, body.len() as u8], body].concat();
        let cert = [vec![SEQUENCE, tbs.len() as u8], tbs].concat();
        // 2026-01-01T00:00:00Z and 2049-12-31T23:59:59Z.
        assert_eq!(validity(&cert), Some((1_767_225_600, 2_524_607_999)));
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"700101000000"), None);
        assert_eq!(time(0x18, b"2024022912000Z"), None);
        assert_eq!(time(0x18, b"20240229120000Z"), Some(1_709_208_000));
    }

    #[test]
    fn truncated_or_garbage_input_is_refused_not_panicked() {
        let cert = certificate();
        for n in 0..cert.len() {
            let _ = subject(&cert[..n]);
            let _ = validity(&cert[..n]);
        }
        assert!(subject(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_none());
        assert!(subject(b"").is_none());
        assert!(validity(b"").is_none());
        assert!(time(0x17, b"99\xff\xff00000000Z").is_none());
        assert!(time(0x18, b"").is_none());
    }
}
