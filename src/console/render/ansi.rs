//! ANSI escape sequences (the colours of a traceback) as HTML: SGR colours and bold become
//! `<span class="ansi-…">`; every other escape sequence is dropped and all text escaped.
//!
//! Classes, not inline styles: the console's CSP allows no inline style.

use std::fmt::Write;

/// The state the SGR codes seen so far leave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Style {
    foreground: Option<u8>,
    background: Option<u8>,
    bold: bool,
    underline: bool,
}

impl Style {
    fn is_plain(self) -> bool {
        self == Style::default()
    }

    fn classes(self) -> String {
        let mut classes = Vec::new();
        if let Some(colour) = self.foreground {
            classes.push(format!("ansi-fg-{colour}"));
        }
        if let Some(colour) = self.background {
            classes.push(format!("ansi-bg-{colour}"));
        }
        if self.bold {
            classes.push("ansi-bold".to_owned());
        }
        if self.underline {
            classes.push("ansi-underline".to_owned());
        }
        classes.join(" ")
    }

    /// Applies the parameters of one `ESC [ … m`.
    fn apply(&mut self, parameters: &str) {
        let codes: Vec<u16> = if parameters.is_empty() {
            vec![0]
        } else {
            parameters
                .split(';')
                .map(|code| code.parse().unwrap_or(0))
                .collect()
        };
        let mut codes = codes.into_iter();
        while let Some(code) = codes.next() {
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                4 => self.underline = true,
                22 => self.bold = false,
                24 => self.underline = false,
                30..=37 => self.foreground = Some((code - 30) as u8),
                90..=97 => self.foreground = Some((code - 90 + 8) as u8),
                39 => self.foreground = None,
                40..=47 => self.background = Some((code - 40) as u8),
                100..=107 => self.background = Some((code - 100 + 8) as u8),
                49 => self.background = None,
                // 256 colours and true colour: the first 16 map to classes; the rest
                // are shown without colour (their parameters are skipped).
                38 | 48 => {
                    let colour = match codes.next() {
                        Some(5) => codes.next().filter(|&n| n < 16).map(|n| n as u8),
                        Some(2) => {
                            codes.next();
                            codes.next();
                            codes.next();
                            None
                        }
                        _ => None,
                    };
                    if code == 38 {
                        self.foreground = colour;
                    } else {
                        self.background = colour;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Escapes `text` for HTML text content.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// `text` with its ANSI colours as spans, everything escaped (for inside a `<pre>`).
pub fn to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut style = Style::default();
    let mut open = false;
    let mut rest = text;
    while let Some(at) = rest.find('\u{1b}') {
        escape_into(&mut out, &rest[..at]);
        let after = &rest[at + 1..];
        let (consumed, sgr) = escape_sequence(after);
        rest = &after[consumed..];
        if let Some(parameters) = sgr {
            let mut next = style;
            next.apply(parameters);
            if next != style {
                if open {
                    out.push_str("</span>");
                    open = false;
                }
                if !next.is_plain() {
                    let _ = write!(out, "<span class=\"{}\">", next.classes());
                    open = true;
                }
                style = next;
            }
        }
    }
    escape_into(&mut out, rest);
    if open {
        out.push_str("</span>");
    }
    out
}

/// The length of the escape sequence at the start of `after` (what follows an ESC),
/// and its parameters when it is an SGR (`[ … m`).
fn escape_sequence(after: &str) -> (usize, Option<&str>) {
    let Some(body) = after.strip_prefix('[') else {
        // A two-character escape (or a lone ESC at the end): drop the next character.
        return (after.chars().next().map_or(0, char::len_utf8), None);
    };
    // CSI: parameter and intermediate bytes, then one final byte in @..~.
    for (index, c) in body.char_indices() {
        if ('@'..='~').contains(&c) {
            let parameters = &body[..index];
            let sgr = (c == 'm' && parameters.chars().all(|c| c.is_ascii_digit() || c == ';'))
                .then_some(parameters);
            return (1 + index + 1, sgr);
        }
        if !(' '..='?').contains(&c) {
            // Not a valid CSI: drop only the `[`.
            return (1, None);
        }
    }
    (after.len(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_classes_and_text_is_escaped() {
        let html = to_html("\u{1b}[0;31mValueError\u{1b}[0m: <script>alert(1)</script>");
        assert_eq!(
            html,
            "<span class=\"ansi-fg-1\">ValueError</span>: &lt;script&gt;alert(1)&lt;/script&gt;"
        );
    }

    #[test]
    fn bold_bright_and_reset() {
        let html = to_html("\u{1b}[1;92mok\u{1b}[22m still green\u{1b}[39m plain");
        assert_eq!(
            html,
            "<span class=\"ansi-fg-10 ansi-bold\">ok</span>\
             <span class=\"ansi-fg-10\"> still green</span> plain"
        );
    }

    #[test]
    fn other_sequences_are_dropped_and_unclosed_spans_closed() {
        assert_eq!(to_html("a\u{1b}[2Kb\u{1b}]c"), "abc");
        assert_eq!(
            to_html("\u{1b}[38;5;4mx"),
            "<span class=\"ansi-fg-4\">x</span>"
        );
        assert_eq!(to_html("\u{1b}[38;2;1;2;3my"), "y");
        assert_eq!(to_html("end\u{1b}"), "end");
        let hostile = to_html("\u{1b}[\"onmouseover=x m\"<b>");
        assert!(
            !hostile.contains('"') && !hostile.contains('<'),
            "{hostile}"
        );
    }
}
