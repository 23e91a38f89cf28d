//! A message's body, kept as the slices it arrived in.
//!
//! A body that came in several large frames is not copied together: each frame is a slice of
//! the chunk it was read into (`amqp::input`), and the body is the list of them. Consumers
//! are sent the slices by reference and a queue log copies them into its write buffer, so a
//! body's bytes are copied once in user space at most (into the log), and never to be
//! reassembled: with 1 MiB bodies in 128 KiB frames, the reassembly and the regrowth of its
//! buffer were a quarter of the broker's time (`benches/compare large-1m`).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

/// A message body: one slice, or the slices of the frames it came in, in order.
#[derive(Debug, Clone, Default)]
pub struct Body {
    repr: Repr,
}

#[derive(Debug, Clone)]
enum Repr {
    /// A body in one piece: one frame's slice, or bytes read back or built whole.
    One(Bytes),
    /// A body in several pieces (at least two, none empty), and their total length.
    Parts(Arc<[Bytes]>, usize),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::One(Bytes::new())
    }
}

impl Body {
    /// A body of `parts`, in order (empty ones are left out).
    pub fn from_parts(mut parts: Vec<Bytes>) -> Self {
        parts.retain(|p| !p.is_empty());
        match parts.len() {
            0 => Body::default(),
            1 => Body::from(parts.swap_remove(0)),
            _ => {
                let len = parts.iter().map(Bytes::len).sum();
                Body {
                    repr: Repr::Parts(parts.into(), len),
                }
            }
        }
    }

    /// The body's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::One(b) => b.len(),
            Repr::Parts(_, len) => *len,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body in one piece, if it is (every body but a large one that came in several
    /// large frames).
    #[inline]
    pub fn as_one(&self) -> Option<&Bytes> {
        match &self.repr {
            Repr::One(b) => Some(b),
            Repr::Parts(..) => None,
        }
    }

    /// The pieces, in order.
    #[inline]
    pub fn parts(&self) -> &[Bytes] {
        match &self.repr {
            Repr::One(b) => std::slice::from_ref(b),
            Repr::Parts(parts, _) => parts,
        }
    }

    /// The body in one piece: borrowed if it is one, else copied together (for the few
    /// readers that need it whole).
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        self.head(self.len())
    }

    /// The first `n` bytes of the body (all of it if it is shorter), in one piece: borrowed
    /// if they are in the first piece, else copied together, no more than `n` bytes (the
    /// management API shows a large body truncated).
    pub fn head(&self, n: usize) -> Cow<'_, [u8]> {
        let parts = self.parts();
        let n = n.min(self.len());
        match parts.first() {
            Some(first) if n <= first.len() => Cow::Borrowed(&first[..n]),
            _ => {
                let mut head = Vec::with_capacity(n);
                for p in parts {
                    if head.len() == n {
                        break;
                    }
                    let take = (n - head.len()).min(p.len());
                    head.extend_from_slice(&p[..take]);
                }
                Cow::Owned(head)
            }
        }
    }

    /// Whether the first `n` bytes of the body (all of it if it is shorter) are UTF-8,
    /// checked piece by piece, without copying them together: the management API's `get`
    /// shows a body as text when it is, and copies only what it shows of it.
    pub fn head_is_utf8(&self, n: usize) -> bool {
        let mut left = n.min(self.len());
        // The start of a character split between pieces (at most 3 bytes), completed from
        // the next piece.
        let mut split: Vec<u8> = Vec::new();
        for piece in self.parts() {
            if left == 0 {
                break;
            }
            let mut rest = &piece[..left.min(piece.len())];
            left -= rest.len();
            while !split.is_empty() {
                let Some((&b, after)) = rest.split_first() else {
                    break;
                };
                split.push(b);
                rest = after;
                match std::str::from_utf8(&split) {
                    Ok(_) => split.clear(),
                    Err(e) if e.error_len().is_some() => return false,
                    Err(_) => {}
                }
            }
            match std::str::from_utf8(rest) {
                Ok(_) => {}
                Err(e) if e.error_len().is_some() => return false,
                Err(e) => split.extend_from_slice(&rest[e.valid_up_to()..]),
            }
        }
        split.is_empty()
    }

    /// Bytes of memory the list of pieces itself takes (not the pieces' bytes).
    pub fn list_bytes(&self) -> usize {
        match &self.repr {
            Repr::One(_) => 0,
            Repr::Parts(parts, _) => 16 + std::mem::size_of_val::<[Bytes]>(parts),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body { repr: Repr::One(b) }
    }
}

impl PartialEq<[u8]> for Body {
    fn eq(&self, other: &[u8]) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let mut rest = other;
        for p in self.parts() {
            let (head, tail) = rest.split_at(p.len());
            if head != &p[..] {
                return false;
            }
            rest = tail;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_as_one_body() {
        let body = Body::from_parts(vec![
            Bytes::from_static(b"hello, "),
            Bytes::new(),
            Bytes::from_static(b"world"),
        ]);
        assert_eq!(body.len(), 12);
        assert_eq!(body.parts().len(), 2);
        assert_eq!(&body.contiguous()[..], b"hello, world");
        assert!(matches!(body.head(5), Cow::Borrowed(b"hello")));
        assert_eq!(&body.head(9)[..], b"hello, wo");
        assert_eq!(&body.head(100)[..], b"hello, world");
        assert!(body == *b"hello, world".as_slice());
        assert!(body != *b"hello, there".as_slice());
        assert!(body != *b"hello".as_slice());
    }

    /// What the management API's `get` decides about a body in pieces: text or not, as if
    /// the pieces were one, whichever piece a character is split across.
    #[test]
    fn a_head_is_utf8_checked_across_pieces() {
        let text = "h\u{e9}\u{20ac}\u{1f600}!".as_bytes();
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let body = Body::from_parts(vec![
                    Bytes::copy_from_slice(&text[..cut]),
                    Bytes::copy_from_slice(&text[cut..cut2]),
                    Bytes::copy_from_slice(&text[cut2..]),
                ]);
                for n in 0..=text.len() + 1 {
                    let whole = std::str::from_utf8(&text[..n.min(text.len())]).is_ok();
                    assert_eq!(
                        body.head_is_utf8(n),
                        whole,
                        "pieces at {cut}, {cut2}; head {n}"
                    );
                }
            }
        }
        let bad = Body::from_parts(vec![
            Bytes::from_static(b"ok \xe2\x82"),
            Bytes::from_static(b"x ok"),
        ]);
        assert!(!bad.head_is_utf8(100));
        assert!(bad.head_is_utf8(3));
        // A character's start over three pieces, then a byte that does not continue it; a
        // surrogate's encoding, split.
        let three = Body::from_parts(vec![
            Bytes::from_static(b"\xf0"),
            Bytes::from_static(b"\x90"),
            Bytes::from_static(b"A"),
        ]);
        assert!(!three.head_is_utf8(3));
        let surrogate = Body::from_parts(vec![
            Bytes::from_static(b"\xed"),
            Bytes::from_static(b"\xa0\x80"),
        ]);
        assert!(!surrogate.head_is_utf8(3));
        let lone = Body::from_parts(vec![Bytes::from_static(b"a\xff"), Bytes::from_static(b"b")]);
        assert!(!lone.head_is_utf8(3));
        assert!(lone.head_is_utf8(1));
    }

    #[test]
    fn one_piece_is_borrowed_whole() {
        let body = Body::from_parts(vec![Bytes::new(), Bytes::from_static(b"x")]);
        assert_eq!(body.parts().len(), 1);
        assert_eq!(body.list_bytes(), 0);
        assert!(matches!(body.contiguous(), Cow::Borrowed(b"x")));
        assert!(Body::from_parts(Vec::new()).is_empty());
    }
}
