//! WebSocket frames (RFC 6455) by hand: client frames decoded and unmasked in place,
//! server frames built once with their header in front.

use std::ops::Range;

/// Continuation frame.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// The ping the server sends (no payload).
pub(crate) const PING: &[u8] = &[0x80 | OP_PING, 0x00];

/// Room for the longest server frame header: one byte of opcode, nine of length.
const HEADER_MAX: usize = 10;

/// A complete client frame whose payload has been unmasked in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The FIN bit.
    pub(crate) fin: bool,
    /// The opcode.
    pub(crate) opcode: u8,
    /// Where the payload is in the buffer.
    pub(crate) payload: Range<usize>,
    /// Bytes the whole frame takes (header and payload).
    pub(crate) len: usize,
}

/// Why a client frame is refused: the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Not a valid client frame (unmasked, reserved bits, bad control frame): 1002.
    Protocol,
    /// The payload is over the limit: 1009.
    TooBig,
}

impl FrameError {
    /// The close code for this error.
    pub(crate) fn code(self) -> u16 {
        match self {
            FrameError::Protocol => 1002,
            FrameError::TooBig => 1009,
        }
    }
}

/// Decodes the frame at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// frame with its payload unmasked in place. `needed` is set to the bytes the whole frame
/// takes as soon as the header is known, so the caller can grow its buffer once.
pub(crate) fn decode(
    buf: &mut [u8],
    max_payload: usize,
    needed: &mut usize,
) -> Result<Option<Frame>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b1 & 0x80 == 0 {
        // Client frames are masked.
        return Err(FrameError::Protocol);
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut n = [0u8; 8];
            n.copy_from_slice(b);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(FrameError::Protocol);
    }
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::Protocol);
    }
    let len = usize::try_from(len).map_err(|_| FrameError::TooBig)?;
    if len > max_payload {
        return Err(FrameError::TooBig);
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [m[0], m[1], m[2], m[3]];
    at += 4;
    *needed = at + len;
    let Some(payload) = buf.get_mut(at..at + len) else {
        return Ok(None);
    };
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: at..at + len,
        len: at + len,
    }))
}

/// A server frame under construction: the payload is written after room for the header,
/// and [`FrameBuf::finish`] fills the header in front of it, so a frame is one allocation.
pub(crate) struct FrameBuf(Vec<u8>);

impl FrameBuf {
    /// An empty text frame with room for `payload` bytes.
    pub(crate) fn with_capacity(payload: usize) -> Self {
        let mut v = Vec::with_capacity(HEADER_MAX + payload);
        v.resize(HEADER_MAX, 0);
        FrameBuf(v)
    }

    /// Appends raw text.
    pub(crate) fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Appends `s` as a JSON string literal.
    pub(crate) fn push_json_str(&mut self, s: &str) {
        if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            // Rare: let serde_json escape it.
            let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
            self.0.extend_from_slice(quoted.as_bytes());
        } else {
            self.0.push(b'"');
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
        }
    }

    /// The finished frame: FIN, text opcode, unmasked length, then the payload.
    pub(crate) fn finish(self) -> Out {
        let mut v = self.0;
        let len = v.len() - HEADER_MAX;
        let start = match len {
            0..=125 => {
                v[HEADER_MAX - 1] = len as u8;
                HEADER_MAX - 2
            }
            126..=0xffff => {
                v[HEADER_MAX - 3] = 126;
                v[HEADER_MAX - 2..HEADER_MAX].copy_from_slice(&(len as u16).to_be_bytes());
                HEADER_MAX - 4
            }
            _ => {
                v[HEADER_MAX - 9] = 127;
                v[HEADER_MAX - 8..HEADER_MAX].copy_from_slice(&(len as u64).to_be_bytes());
                HEADER_MAX - 10
            }
        };
        v[start] = 0x80 | OP_TEXT;
        Out { buf: v, start }
    }
}

/// A finished server frame.
pub(crate) struct Out {
    buf: Vec<u8>,
    start: usize,
}

impl Out {
    /// The frame's bytes, header first.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// A text frame carrying `text`.
pub(crate) fn text(text: &str) -> Out {
    let mut f = FrameBuf::with_capacity(text.len());
    f.push_str(text);
    f.finish()
}

/// The event frame `{"event":name,"data":data}`; `data` is JSON text.
pub(crate) fn event(name: &str, data: &str) -> Out {
    let mut f = FrameBuf::with_capacity(name.len() + data.len() + 22);
    f.push_str("{\"event\":");
    f.push_json_str(name);
    f.push_str(",\"data\":");
    f.push_str(data);
    f.push_str("}");
    f.finish()
}

/// A close frame with `code` and no reason.
pub(crate) fn close(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x80 | OP_CLOSE, 2, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a client writes it.
    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => v.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn decode_all(buf: &mut [u8], max: usize) -> Result<Option<Frame>, FrameError> {
        let mut needed = 0;
        decode(buf, max, &mut needed)
    }

    #[test]
    fn masked_text_is_unmasked_in_place() {
        let mut buf = masked(true, OP_TEXT, br#"{"op":"connect"}"#);
        buf.extend_from_slice(&masked(true, OP_PING, b"hi"));
        let f = decode_all(&mut buf, 1 << 20)
            .expect("valid")
            .expect("complete");
        assert!(f.fin);
        assert_eq!(f.opcode, OP_TEXT);
        assert_eq!(&buf[f.payload.clone()], br#"{"op":"connect"}"#);
        let rest = &mut buf[f.len..];
        let g = decode_all(rest, 1 << 20).expect("valid").expect("complete");
        assert_eq!((g.opcode, &rest[g.payload.clone()]), (OP_PING, &b"hi"[..]));
        assert_eq!(g.len, rest.len());
    }

    #[test]
    fn all_three_length_forms() {
        for n in [0usize, 125, 126, 300, 0xffff, 0x10000, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut buf = masked(true, OP_TEXT, &payload);
            let f = decode_all(&mut buf, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert_eq!(f.len, buf.len(), "length {n}");
            assert_eq!(&buf[f.payload.clone()], &payload[..], "length {n}");
        }
    }

    #[test]
    fn partial_input_waits_and_says_how_much_it_needs() {
        let whole = masked(true, OP_TEXT, &[b'x'; 300]);
        for cut in 0..whole.len() {
            let mut part = whole[..cut].to_vec();
            let mut needed = 0;
            assert_eq!(
                decode(&mut part, 1 << 20, &mut needed),
                Ok(None),
                "cut {cut}"
            );
            if cut >= 8 {
                assert_eq!(needed, whole.len());
            }
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&(2u64 << 20).to_be_bytes());
        assert_eq!(decode_all(&mut head, 1 << 20), Err(FrameError::TooBig));
        assert_eq!(FrameError::TooBig.code(), 1009);
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode_all(&mut huge, 1 << 20), Err(FrameError::TooBig));
    }

    #[test]
    fn protocol_errors() {
        // unmasked
        assert_eq!(
            decode_all(&mut [0x81, 0x01, b'x'], 1 << 20),
            Err(FrameError::Protocol)
        );
        // reserved bits
        let mut rsv = masked(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        assert_eq!(decode_all(&mut rsv, 1 << 20), Err(FrameError::Protocol));
        // fragmented ping, and a ping over 125 bytes
        let mut frag = masked(false, OP_PING, b"x");
        assert_eq!(decode_all(&mut frag, 1 << 20), Err(FrameError::Protocol));
        let mut big = masked(true, OP_PING, &[0; 126]);
        assert_eq!(decode_all(&mut big, 1 << 20), Err(FrameError::Protocol));
        // unknown opcode
        let mut odd = masked(true, 0x3, b"x");
        assert_eq!(decode_all(&mut odd, 1 << 20), Err(FrameError::Protocol));
    }

    #[test]
    fn server_frames_have_the_right_header() {
        let f = event("message:received", r#"{"a":1}"#);
        let b = f.bytes();
        assert_eq!(b[0], 0x81);
        assert_eq!(usize::from(b[1]), b.len() - 2);
        assert_eq!(&b[2..], br#"{"event":"message:received","data":{"a":1}}"#);
        let long = text(&"y".repeat(300));
        assert_eq!(&long.bytes()[..4], &[0x81, 126, 0x01, 0x2c]);
        let longer = text(&"z".repeat(70_000));
        assert_eq!(longer.bytes()[1], 127);
        assert_eq!(longer.bytes().len(), 70_010);
        let odd = event("we\"ird", "null");
        assert_eq!(&odd.bytes()[2..], br#"{"event":"we\"ird","data":null}"#);
        assert_eq!(close(4401), [0x88, 2, 0x11, 0x31]);
    }
}
