//! The one error type for reading specs, with a rustc-style rendering of the source.

use std::fmt::Write as _;

use crate::span::{Span, line_col};

/// A spec that could not be read: where, and why.
///
/// `Display` gives `line:column: message`; [`ParseError::render`] adds the file name and
/// the offending source line with the span underlined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Byte range in the source.
    pub span: Span,
    pub message: String,
}

impl ParseError {
    pub fn at(source: &str, span: Span, message: impl Into<String>) -> ParseError {
        let (line, column) = line_col(source, span.start);
        ParseError {
            line,
            column,
            span,
            message: message.into(),
        }
    }

    /// `file:line:col: message`, then the source line with `^^^` under the span (its first
    /// line, if it covers several).
    pub fn render(&self, source: &str, file_name: &str) -> String {
        let mut out = format!("{file_name}:{self}\n");
        let start = source.floor_char_boundary(self.span.start);
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let text = source[line_start..line_end].trim_end_matches('\r');
        let end = source.floor_char_boundary(self.span.end.clamp(start, line_start + text.len()));
        // Keep tabs so the carets line up under tab-indented source.
        let pad: String = source[line_start..start]
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let carets = "^".repeat(source[start..end].chars().count().max(1));
        let gutter = " ".repeat(self.line.to_string().len());
        let _ = write!(
            out,
            "{gutter} |\n{} | {text}\n{gutter} | {pad}{carets}",
            self.line
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::parse;

    fn render(source: &str) -> String {
        parse(source).unwrap_err().render(source, "x.spec")
    }

    #[test]
    fn underlines_the_span() {
        let source = "((from base)\n (rn (shell \"x\")))";
        let e = parse(source).unwrap_err();
        assert_eq!(e.to_string(), "2:3: unknown op `rn`; did you mean `run`?");
        let expected = [
            "x.spec:2:3: unknown op `rn`; did you mean `run`?",
            "  |",
            "2 |  (rn (shell \"x\")))",
            "  |   ^^",
        ];
        assert_eq!(render(source), expected.join("\n"));
    }

    #[test]
    fn keeps_tabs_and_counts_characters() {
        let source = "((from base)\n\t(env é\t(v)))";
        let expected = [
            "x.spec:2:9: expected a value, found a list",
            "  |",
            "2 | \t(env é\t(v)))",
            "  | \t      \t^^^",
        ];
        assert_eq!(render(source), expected.join("\n"));
    }

    #[test]
    fn multi_line_spans_stop_at_the_line_end() {
        let source = "((from base)\n (env a\n  b c))\n";
        let expected = [
            "x.spec:2:2: `env` takes a name and a value: (env NAME VALUE)",
            "  |",
            "2 |  (env a",
            "  |  ^^^^^^",
        ];
        assert_eq!(render(source), expected.join("\n"));
    }

    #[test]
    fn end_of_input_gets_one_caret() {
        let mut source = "; lines\n".repeat(9);
        source.push_str("(a");
        let expected = ["x.spec:10:1: unclosed `(`", "   |", "10 | (a", "   | ^"];
        assert_eq!(render(&source), expected.join("\n"));
        let expected = [
            "x.spec:1:1: expected an s-expression, found end of input",
            "  |",
            "1 | ",
            "  | ^",
        ];
        assert_eq!(render(""), expected.join("\n"));
    }
}
