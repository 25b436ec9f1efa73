//! Newline-delimited JSON from a stdio server's stdout, reassembled whatever the chunking.
//!
//! Docker's multiplexed attach frames (bollard decodes their 8-byte headers) carry arbitrary
//! slices of stdout: a frame may hold half a line or several lines. `LineAssembler` turns the
//! byte chunks back into lines, capping a line's length so that a server that never writes a
//! newline cannot make the bridge buffer without bound.

use bytes::{Buf, BytesMut};

/// One item out of the assembler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Complete(Vec<u8>),
    /// A line longer than the cap was dropped; this many bytes of it were seen.
    TooLong(usize),
}

/// Reassembles lines from chunks.
#[derive(Debug)]
pub struct LineAssembler {
    buf: BytesMut,
    max: usize,
    /// Inside an over-long line: discard until the next newline; counts the bytes.
    skipping: Option<usize>,
}

impl LineAssembler {
    /// An assembler for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineAssembler {
            buf: BytesMut::new(),
            max,
            skipping: None,
        }
    }

    /// Feeds a chunk; returns the lines it completed, in order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let newline = memchr::memchr(b'\n', chunk);
            if let Some(seen) = self.skipping.as_mut() {
                match newline {
                    Some(i) => {
                        out.push(Line::TooLong(*seen + i));
                        self.skipping = None;
                        chunk = &chunk[i + 1..];
                    }
                    None => {
                        *seen += chunk.len();
                        chunk = &[];
                    }
                }
                continue;
            }
            let take = newline.unwrap_or(chunk.len());
            if self.buf.len() + take > self.max {
                self.skipping = Some(self.buf.len() + take);
                self.buf.clear();
                if let Some(i) = newline {
                    // The whole over-long line ended inside this chunk.
                    let seen = self.skipping.take().unwrap_or(0);
                    out.push(Line::TooLong(seen));
                    chunk = &chunk[i + 1..];
                } else {
                    chunk = &[];
                }
                continue;
            }
            self.buf.extend_from_slice(&chunk[..take]);
            match newline {
                Some(i) => {
                    let mut line = self.buf.split().to_vec();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        out.push(Line::Complete(line));
                    }
                    chunk = &chunk[i + 1..];
                }
                None => chunk = &[],
            }
        }
        if self.buf.capacity() > 4 * self.max.min(1 << 20) && self.buf.is_empty() {
            // Give back a buffer grown for one large line.
            self.buf = BytesMut::new();
        }
        out
    }

    /// Bytes of an unfinished line held now.
    pub fn pending(&self) -> usize {
        self.buf.remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(lines: Vec<Line>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| match l {
                Line::Complete(b) => String::from_utf8(b).expect("utf-8"),
                Line::TooLong(n) => format!("<too long: {n}>"),
            })
            .collect()
    }

    /// Splits `input` at every combination of chunk sizes from a small deterministic
    /// generator and checks the result never depends on the chunking.
    fn all_chunkings(input: &[u8], max: usize) -> Vec<String> {
        let whole = complete(LineAssembler::new(max).push(input));
        for seed in 1..200u64 {
            let mut a = LineAssembler::new(max);
            let mut got = Vec::new();
            let mut rest = input;
            let mut x = seed;
            while !rest.is_empty() {
                // xorshift: chunk sizes from 1 to 17 bytes.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (x % 17 + 1) as usize;
                let n = n.min(rest.len());
                got.extend(complete(a.push(&rest[..n])));
                rest = &rest[n..];
            }
            assert_eq!(got, whole, "chunking with seed {seed} changed the lines");
        }
        whole
    }

    #[test]
    fn lines_survive_any_chunking() {
        let input = b"{\"a\":1}\n{\"b\":\"two\"}\r\n\n{\"c\":[1,2,3]}\n{\"partial\"";
        assert_eq!(
            all_chunkings(input, 1024),
            vec![r#"{"a":1}"#, r#"{"b":"two"}"#, r#"{"c":[1,2,3]}"#]
        );
    }

    #[test]
    fn over_long_lines_are_dropped_and_reported_without_buffering() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"ok\":1}\n");
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\n{\"ok\":2}\n");
        assert_eq!(
            all_chunkings(&input, 50),
            vec![r#"{"ok":1}"#, "<too long: 100>", r#"{"ok":2}"#]
        );
    }

    #[test]
    fn a_line_exactly_at_the_cap_passes() {
        let line = "y".repeat(32);
        let input = format!("{line}\n");
        assert_eq!(all_chunkings(input.as_bytes(), 32), vec![line]);
    }

    #[test]
    fn pending_counts_the_unfinished_line() {
        let mut a = LineAssembler::new(64);
        assert!(a.push(b"abc").is_empty());
        assert_eq!(a.pending(), 3);
        assert_eq!(complete(a.push(b"def\n")), vec!["abcdef"]);
        assert_eq!(a.pending(), 0);
    }
}
