//! Reading the end of a file backwards: its last complete lines and any bytes after the
//! last newline (a torn line), without reading the whole file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const FIRST_CHUNK: u64 = 64 * 1024;

/// The end of a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Up to the requested number of complete lines, oldest first, without `\n`.
    pub lines: Vec<Vec<u8>>,
    /// Whether `lines[0]` is the first line of the file.
    pub from_start: bool,
    /// Length of the file up to and including its last `\n`.
    pub complete_len: u64,
    /// Bytes after the last `\n`.
    pub torn: u64,
}

/// The last `count` complete lines of the first `len` bytes of `file`.
pub fn read_tail(file: &File, len: u64, count: usize) -> io::Result<Tail> {
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = FIRST_CHUNK;
    loop {
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        // `count` lines need `count + 1` newlines unless they reach the file's start.
        if newlines > count || start == 0 {
            break;
        }
        let from = start.saturating_sub(chunk);
        let mut piece = vec![0u8; usize::try_from(start - from).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut piece, from)?;
        piece.extend_from_slice(&buf);
        buf = piece;
        start = from;
        chunk = chunk.saturating_mul(2);
    }
    let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok(Tail {
            torn: len,
            from_start: true,
            ..Tail::default()
        });
    };
    let torn = (buf.len() - last_newline - 1) as u64;
    let complete = &buf[..last_newline];
    let mut pieces: Vec<&[u8]> = complete.split(|&b| b == b'\n').collect();
    if start > 0 {
        pieces.remove(0); // begins in the middle of a line
    }
    let from_start = start == 0 && pieces.len() <= count;
    let skip = pieces.len().saturating_sub(count);
    Ok(Tail {
        lines: pieces[skip..].iter().map(|l| l.to_vec()).collect(),
        from_start,
        complete_len: len - torn,
        torn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail_of(content: &[u8], count: usize) -> Tail {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        read_tail(&file, content.len() as u64, count).unwrap()
    }

    #[test]
    fn last_lines_and_torn_bytes() {
        let tail = tail_of(b"a\nbb\nccc\ndd", 2);
        assert_eq!(tail.lines, [b"bb".to_vec(), b"ccc".to_vec()]);
        assert!(!tail.from_start);
        assert_eq!((tail.complete_len, tail.torn), (9, 2));

        let tail = tail_of(b"a\nbb\n", 2);
        assert_eq!(tail.lines, [b"a".to_vec(), b"bb".to_vec()]);
        assert!(tail.from_start);

        let tail = tail_of(b"only\n", 2);
        assert_eq!(tail.lines, [b"only".to_vec()]);
        assert!(tail.from_start);

        let tail = tail_of(b"no newline", 2);
        assert!(tail.lines.is_empty());
        assert_eq!((tail.complete_len, tail.torn), (0, 10));

        assert_eq!(
            tail_of(b"", 2),
            Tail {
                from_start: true,
                ..Tail::default()
            }
        );
    }

    #[test]
    fn lines_longer_than_a_chunk() {
        let long = vec![b'x'; 200_000];
        let mut content = long.clone();
        content.push(b'\n');
        content.extend_from_slice(&long);
        content.extend_from_slice(b"\nshort\n");
        let tail = tail_of(&content, 2);
        assert_eq!(tail.lines, [long, b"short".to_vec()]);
        assert!(!tail.from_start);
    }
}
