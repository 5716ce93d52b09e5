//! JSON text written directly: a string is copied as it is unless it holds a character
//! JSON escapes, then written as `serde_json` writes it.

/// Whether `s` holds a character a JSON string escapes: `"`, `\` or a control character.
/// Eight bytes at a time, as each test below is exact for whether any byte of a word is
/// zero (or below `0x20`).
pub fn needs_escape(s: &str) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let any_zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let words = s.as_bytes().chunks_exact(8);
    let rest = words.remainder();
    for word in words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let v = u64::from_ne_bytes(bytes);
        let found = v.wrapping_sub(ONES * 0x20) & !v
            | any_zero(v ^ (ONES * u64::from(b'"')))
            | any_zero(v ^ (ONES * u64::from(b'\\')));
        if found & HIGH != 0 {
            return true;
        }
    }
    rest.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Appends `s` as a JSON string: copied when nothing in it needs escaping, else as
/// `serde_json` escapes it.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        // Writing a string into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{needs_escape, push_str};

    proptest! {
        /// The word-wide test finds what a byte-wise test finds.
        #[test]
        fn needs_escape_finds_what_a_byte_wise_test_finds(
            s in "[\\x00-\\x7f\u{80}-\u{7ff}\u{10000}-\u{10ffff}]{0,40}"
        ) {
            let bytewise = s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(needs_escape(&s), bytewise);
        }
    }

    #[test]
    fn needs_escape_finds_each_character_to_escape_at_any_place() {
        for len in 0..20 {
            let plain = "aé".repeat(len).chars().take(len).collect::<String>();
            assert!(!needs_escape(&plain), "{plain:?}");
            for at in 0..=len {
                for c in ['"', '\\', '\u{0}', '\n', '\u{1f}'] {
                    let mut s = plain.clone();
                    s.insert(s.char_indices().nth(at).map_or(s.len(), |(i, _)| i), c);
                    assert!(needs_escape(&s), "{s:?}");
                }
            }
        }
        for c in [' ', '!', '#', '[', ']', '~', '\u{7f}', 'ÿ'] {
            assert!(!needs_escape(&c.to_string().repeat(17)), "{c:?}");
        }
    }

    #[test]
    fn a_string_is_written_as_serde_json_writes_it() {
        for s in [
            "",
            "plain",
            "é ∑ 🌀",
            "a\"b\\c\u{1}\u{8}\u{c}\n\r\t\u{1f}",
            "\u{7f}",
        ] {
            let mut out = b"x".to_vec();
            push_str(&mut out, s);
            let expected = serde_json::to_vec(s).expect("a string serializes");
            assert_eq!(out[1..], expected[..], "{s:?}");
        }
    }
}
