//! Code as HTML with light highlighting: comments, strings, numbers, keywords and
//! decorators get a class; everything is escaped. A small lexer of Python's surface
//! (most notebooks), harmless for other languages: no grammar, no dependencies, and a
//! cell of any size costs one pass.

use super::ansi::escape_into;

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "match", "case",
];

fn span(out: &mut String, class: &str, text: &str) {
    out.push_str("<span class=\"");
    out.push_str(class);
    out.push_str("\">");
    escape_into(out, text);
    out.push_str("</span>");
}

/// The end (byte index) of the string literal starting at `start` (its quote).
fn string_end(code: &str, start: usize) -> usize {
    let rest = &code[start..];
    let quote = if rest.starts_with("\"\"\"") {
        "\"\"\""
    } else if rest.starts_with("'''") {
        "'''"
    } else if rest.starts_with('"') {
        "\""
    } else {
        "'"
    };
    let mut index = quote.len();
    let bytes = rest.as_bytes();
    while index < rest.len() {
        if bytes[index] == b'\\' {
            index += 2;
            continue;
        }
        if quote.len() == 1 && bytes[index] == b'\n' {
            return start + index;
        }
        if bytes[index..].starts_with(quote.as_bytes()) {
            return start + index + quote.len();
        }
        index += 1;
    }
    code.len()
}

/// `code` as highlighted, escaped HTML (for inside a `<pre><code>`).
pub fn to_html(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + code.len() / 3);
    let bytes = code.as_bytes();
    let mut index = 0;
    let mut plain_from = 0;
    let flush = |out: &mut String, from: usize, to: usize| escape_into(out, &code[from..to]);
    while index < bytes.len() {
        let byte = bytes[index];
        let token_end = match byte {
            b'#' => Some((
                code[index..].find('\n').map_or(code.len(), |n| index + n),
                "c",
            )),
            b'"' | b'\'' => Some((string_end(code, index).min(code.len()), "s")),
            b'@' if code[..index].ends_with('\n') || index == 0 => {
                let end = code[index + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                    .map_or(code.len(), |n| index + 1 + n);
                Some((end, "d"))
            }
            _ if byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80 => {
                let end = code[index..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(code.len(), |n| index + n);
                let word = &code[index..end];
                // A string prefix (f"", rb'') belongs to the string.
                if end < bytes.len()
                    && matches!(bytes[end], b'"' | b'\'')
                    && word.len() <= 2
                    && word.chars().all(|c| "rRbBfFuU".contains(c))
                {
                    Some((string_end(code, end).min(code.len()), "s"))
                } else if KEYWORDS.contains(&word) {
                    Some((end, "k"))
                } else {
                    flush(&mut out, plain_from, index);
                    escape_into(&mut out, word);
                    index = end;
                    plain_from = end;
                    continue;
                }
            }
            b'0'..=b'9' => {
                let end = code[index..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .map_or(code.len(), |n| index + n);
                Some((end, "n"))
            }
            _ => None,
        };
        match token_end {
            Some((end, class)) if end > index => {
                flush(&mut out, plain_from, index);
                span(&mut out, class, &code[index..end]);
                index = end;
                plain_from = end;
            }
            _ => {
                // Step over one whole character.
                index += code[index..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    flush(&mut out, plain_from, code.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_is_highlighted_and_escaped() {
        let html = to_html("import os  # <b>\nx = f\"<{os.sep}>\" if 1 else None\n");
        assert_eq!(
            html,
            "<span class=\"k\">import</span> os  <span class=\"c\"># &lt;b&gt;</span>\n\
             x = <span class=\"s\">f&quot;&lt;{os.sep}&gt;&quot;</span> \
             <span class=\"k\">if</span> <span class=\"n\">1</span> \
             <span class=\"k\">else</span> <span class=\"k\">None</span>\n"
        );
    }

    #[test]
    fn unterminated_strings_and_non_ascii_do_not_break_it() {
        assert_eq!(
            to_html("s = '''é</script>"),
            "s = <span class=\"s\">&#39;&#39;&#39;é&lt;/script&gt;</span>"
        );
        assert_eq!(
            to_html("ünïcode = 'a\\'"),
            "ünïcode = <span class=\"s\">&#39;a\\&#39;</span>"
        );
        assert_eq!(
            to_html("@dataclass\nclass A: pass"),
            "<span class=\"d\">@dataclass</span>\n<span class=\"k\">class</span> A: <span class=\"k\">pass</span>"
        );
    }
}
