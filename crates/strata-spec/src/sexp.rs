//! A sexplib-compatible S-expression reader and printer, with byte spans on every node.
//!
//! The reader accepts what OBuilder's `Sexplib.Sexp.of_string` accepts: bare atoms (`.`,
//! `./`, `--login`, `4.10` stay text), quoted strings with sexplib's escapes and
//! `\`-newline continuations, `;` line comments, `#;` datum comments and nestable
//! `#| |#` block comments. Quoted and bare atoms are the same thing, as in sexplib.

use std::borrow::Cow;
use std::fmt;

use crate::ParseError;
pub use crate::span::{Span, line_col};

/// An S-expression node and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sexp {
    pub kind: SexpKind,
    /// Zero for nodes built in code rather than read.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SexpKind {
    Atom(String),
    List(Vec<Sexp>),
}

impl Sexp {
    pub fn atom(text: impl Into<String>) -> Sexp {
        Sexp {
            kind: SexpKind::Atom(text.into()),
            span: Span::default(),
        }
    }

    pub fn list(items: Vec<Sexp>) -> Sexp {
        Sexp {
            kind: SexpKind::List(items),
            span: Span::default(),
        }
    }

    pub fn as_atom(&self) -> Option<&str> {
        match &self.kind {
            SexpKind::Atom(text) => Some(text),
            SexpKind::List(_) => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Sexp]> {
        match &self.kind {
            SexpKind::List(items) => Some(items),
            SexpKind::Atom(_) => None,
        }
    }

    /// Structural equality that ignores spans (a printed-then-read tree has new spans).
    pub fn eq_ignoring_spans(&self, other: &Sexp) -> bool {
        match (&self.kind, &other.kind) {
            (SexpKind::Atom(a), SexpKind::Atom(b)) => a == b,
            (SexpKind::List(a), SexpKind::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignoring_spans(y))
            }
            _ => false,
        }
    }
}

/// Prints on one line, quoting atoms only where the reader needs it.
impl fmt::Display for Sexp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SexpKind::Atom(text) => f.write_str(&quote_atom(text)),
            SexpKind::List(items) => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Returns `text` as it must be written so that reading it gives `text` back.
pub fn quote_atom(text: &str) -> Cow<'_, str> {
    let needs_quotes = text.is_empty()
        || text.contains("#|")
        || text.contains("|#")
        || text
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b"();\"\\".contains(&b));
    if !needs_quotes {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            c if c < ' ' || c == '\u{7f}' => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// Reads exactly one S-expression (comments and blanks around it are fine).
pub fn parse_one(source: &str) -> Result<Sexp, ParseError> {
    let mut reader = Reader {
        src: source,
        pos: 0,
        depth: 0,
    };
    let Some(sexp) = reader.datum()? else {
        return Err(reader.stray_or("expected an s-expression, found end of input"));
    };
    match reader.datum()? {
        Some(extra) => Err(ParseError::at(
            source,
            extra.span,
            "unexpected s-expression after the end of the first one",
        )),
        None if reader.pos < source.len() => Err(reader.stray_or("")),
        None => Ok(sexp),
    }
}

/// Reads every S-expression in `source`, in order.
pub fn parse_all(source: &str) -> Result<Vec<Sexp>, ParseError> {
    let mut reader = Reader {
        src: source,
        pos: 0,
        depth: 0,
    };
    let mut out = Vec::new();
    while let Some(sexp) = reader.datum()? {
        out.push(sexp);
    }
    if reader.pos < source.len() {
        return Err(reader.stray_or(""));
    }
    Ok(out)
}

/// How deep lists (and `#;` chains) may nest: the reader recurses, and a hostile spec must
/// get an error rather than overflow the stack. Real specs nest a handful of levels.
const MAX_DEPTH: usize = 200;

struct Reader<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        self.src.as_bytes()[self.pos..].starts_with(s.as_bytes())
    }

    fn error(&self, start: usize, end: usize, message: impl Into<String>) -> ParseError {
        ParseError::at(self.src, Span::new(start, end), message)
    }

    /// The error for where reading stopped: a stray `)`, or `eof_message` at the end.
    fn stray_or(&self, eof_message: &str) -> ParseError {
        if self.peek() == Some(b')') {
            self.error(
                self.pos,
                self.pos + 1,
                "unexpected `)` with no matching `(`",
            )
        } else {
            self.error(self.pos, self.pos, eof_message)
        }
    }

    /// Skips blanks and comments other than `#;` (which needs the reader).
    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' | 0x0c => self.pos += 1,
                b'\r' if self.starts_with("\r\n") => self.pos += 2,
                // sexplib has no rule for a lone CR, so it is a lexing error there too.
                b'\r' => return Err(self.error(self.pos, self.pos + 1, "stray carriage return")),
                b';' => {
                    let rest = &self.src.as_bytes()[self.pos..];
                    self.pos += rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                }
                _ if self.starts_with("#|") => self.block_comment()?,
                _ if self.starts_with("|#") => {
                    return Err(self.error(self.pos, self.pos + 2, "`|#` without an opening `#|`"));
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Skips a `#| ... |#` comment; they nest, and strings inside them are read as strings
    /// so that a `"|#"` in one does not end the comment (as in sexplib).
    fn block_comment(&mut self) -> Result<(), ParseError> {
        let mut opened = vec![self.pos];
        self.pos += 2;
        while let Some(&start) = opened.last() {
            match self.peek() {
                None => return Err(self.error(start, start + 2, "unterminated block comment")),
                Some(b'"') => {
                    self.string()?;
                }
                _ if self.starts_with("#|") => {
                    opened.push(self.pos);
                    self.pos += 2;
                }
                _ if self.starts_with("|#") => {
                    opened.pop();
                    self.pos += 2;
                }
                Some(_) => self.pos += 1,
            }
        }
        Ok(())
    }

    /// The next datum, or `None` at a `)` or the end (neither consumed).
    fn datum(&mut self) -> Result<Option<Sexp>, ParseError> {
        if self.depth == MAX_DEPTH {
            let message = format!("s-expression nested more than {MAX_DEPTH} levels deep");
            return Err(self.error(self.pos, self.pos, message));
        }
        self.depth += 1;
        let datum = self.datum_here();
        self.depth -= 1;
        datum
    }

    fn datum_here(&mut self) -> Result<Option<Sexp>, ParseError> {
        loop {
            self.skip_trivia()?;
            let start = self.pos;
            let kind = match self.peek() {
                None | Some(b')') => return Ok(None),
                _ if self.starts_with("#;") => {
                    self.pos += 2;
                    if self.datum()?.is_none() {
                        return Err(self.error(
                            start,
                            start + 2,
                            "`#;` must be followed by an s-expression",
                        ));
                    }
                    continue;
                }
                Some(b'(') => {
                    self.pos += 1;
                    let mut items = Vec::new();
                    while let Some(item) = self.datum()? {
                        items.push(item);
                    }
                    if self.peek().is_none() {
                        return Err(self.error(start, start + 1, "unclosed `(`"));
                    }
                    self.pos += 1;
                    SexpKind::List(items)
                }
                Some(b'"') => SexpKind::Atom(self.string()?),
                Some(_) => SexpKind::Atom(self.bare_atom()?),
            };
            return Ok(Some(Sexp {
                kind,
                span: Span::new(start, self.pos),
            }));
        }
    }

    fn bare_atom(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let rest = &self.src.as_bytes()[start..];
        let len = rest
            .iter()
            .position(|b| b" \t\n\r\x0c();\"".contains(b))
            .unwrap_or(rest.len());
        self.pos += len;
        let text = &self.src[start..self.pos];
        if text.contains("#|") || text.contains("|#") {
            return Err(self.error(start, self.pos, "`#|` or `|#` inside an unquoted atom"));
        }
        Ok(text.to_owned())
    }

    /// Reads a quoted string starting at the `"`, applying sexplib's escapes.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut out = Vec::new();
        self.pos += 1;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error(start, start + 1, "unterminated string"));
            };
            self.pos += 1;
            if b == b'"' {
                break;
            }
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match bytes[self.pos..] {
                [] => {} // reported as unterminated on the next turn
                // A continuation: drop the newline and the next line's indentation.
                [b'\n', ..] | [b'\r', b'\n', ..] => {
                    self.pos += if bytes[self.pos] == b'\r' { 2 } else { 1 };
                    while matches!(self.peek(), Some(b' ' | b'\t')) {
                        self.pos += 1;
                    }
                }
                [c @ (b'\\' | b'\'' | b'"' | b' '), ..] => {
                    out.push(c);
                    self.pos += 1;
                }
                [c @ (b'n' | b't' | b'b' | b'r'), ..] => {
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'b' => 0x08,
                        _ => b'\r',
                    });
                    self.pos += 1;
                }
                [a @ b'0'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
                    let code = [a, b, c]
                        .iter()
                        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                    let Ok(byte) = u8::try_from(code) else {
                        let message = format!("illegal escape `\\{code}`: above 255");
                        return Err(self.error(self.pos - 1, self.pos + 3, message));
                    };
                    out.push(byte);
                    self.pos += 3;
                }
                [b'x', h, l, ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let hex = |d: u8| (d as char).to_digit(16).unwrap_or_default() as u8;
                    out.push(hex(h) * 16 + hex(l));
                    self.pos += 3;
                }
                // Unknown escapes keep their backslash: "C:\obuilder" means what it says.
                _ => out.push(b'\\'),
            }
        }
        String::from_utf8(out)
            .map_err(|_| self.error(start, self.pos, "string escapes do not form valid utf-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(source: &str) -> String {
        parse_one(source).unwrap().as_atom().unwrap().to_owned()
    }

    /// (line, column, message) of the error reading `source`.
    fn error(source: &str) -> (usize, usize, String) {
        let e = parse_all(source).unwrap_err();
        (e.line, e.column, e.message)
    }

    fn show(source: &str) -> String {
        let all = parse_all(source).unwrap();
        all.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn bare_atoms_stay_text() {
        for text in [
            ".", "./", "--login", "@install", "4.10", "#", "|", "a#b", "a|b", "C:/src", "é", "x'y",
        ] {
            assert_eq!(atom(text), text);
        }
        assert_eq!(show("(src . ./ obuilder.opam)"), "(src . ./ obuilder.opam)");
        // `;` ends an atom and starts a comment, as in sexplib.
        assert_eq!(show("a#;b\nc"), "a# c");
    }

    #[test]
    fn string_escapes() {
        assert_eq!(atom(r#""a\nb\tc\bd\re""#), "a\nb\tc\u{8}d\re");
        assert_eq!(atom(r#""\\ \" \' \ x""#), "\\ \" ' \u{20}x");
        assert_eq!(atom(r#""\065\x42\x6a""#), "ABj");
        assert_eq!(atom(r#""\195\169""#), "é");
        // Unknown or incomplete escapes keep the backslash.
        assert_eq!(atom(r#""C:\obuilder""#), "C:\\obuilder");
        assert_eq!(atom(r#""\12 \x4g \q \é""#), "\\12 \\x4g \\q \\é");
        assert_eq!(atom("\"raw\nnewline\""), "raw\nnewline");
        assert_eq!(atom("\"\""), "");
    }

    #[test]
    fn continuations_skip_newline_and_indentation() {
        assert_eq!(atom("\"cd ~/opam \\\n\t    && make\""), "cd ~/opam && make");
        assert_eq!(atom("\"a\\\r\n  b\""), "ab");
        // Only blanks right after the newline go; a second line break is kept.
        assert_eq!(atom("\"a\\\n\n b\""), "a\n b");
    }

    #[test]
    fn comments() {
        assert_eq!(show("; line\n(a ; trailing\n b)"), "(a b)");
        assert_eq!(show("(a #;b c)"), "(a c)");
        assert_eq!(show("(a #; (b (c)) d)"), "(a d)");
        assert_eq!(show("(#; #; a b c)"), "(c)");
        assert_eq!(show("(a #| block |# b)"), "(a b)");
        assert_eq!(show("#| outer #| inner |# still |# x"), "x");
        assert_eq!(show("#| \"|#\" |# x"), "x");
        assert_eq!(show("#|| x ||# y"), "y");
        assert_eq!(show("a\r\nb\x0cc"), "a b c");
    }

    #[test]
    fn spans_and_line_columns() {
        let source = "; c\n(ab \"c d\")";
        let sexp = parse_one(source).unwrap();
        assert_eq!(sexp.span, Span::new(4, 14));
        let items = sexp.as_list().unwrap();
        assert_eq!(items[0].span, Span::new(5, 7));
        assert_eq!(items[1].span, Span::new(8, 13));
        assert_eq!(line_col(source, 8), (2, 5));
        assert_eq!(line_col("é\tx", 3), (1, 3));
        assert_eq!(line_col("a\n", 2), (2, 1));
    }

    #[test]
    fn errors() {
        assert_eq!(error("(a\n (b)"), (1, 1, "unclosed `(`".into()));
        assert_eq!(
            error("(a))"),
            (1, 4, "unexpected `)` with no matching `(`".into())
        );
        assert_eq!(error("(a \"bc"), (1, 4, "unterminated string".into()));
        assert_eq!(
            error("x \"\\256\""),
            (1, 4, "illegal escape `\\256`: above 255".into())
        );
        assert_eq!(
            error("\"\\255\""),
            (1, 1, "string escapes do not form valid utf-8".into())
        );
        assert_eq!(
            error("a\n  #| x #| y |#"),
            (2, 3, "unterminated block comment".into())
        );
        assert_eq!(
            error("a |# b"),
            (1, 3, "`|#` without an opening `#|`".into())
        );
        assert_eq!(
            error("(a#|b)"),
            (1, 2, "`#|` or `|#` inside an unquoted atom".into())
        );
        assert_eq!(
            error("(a #;)"),
            (1, 4, "`#;` must be followed by an s-expression".into())
        );
        assert_eq!(error("a\rb"), (1, 2, "stray carriage return".into()));
        let e = parse_one("(a) (b)").unwrap_err();
        assert_eq!(
            (e.column, e.message.as_str()),
            (5, "unexpected s-expression after the end of the first one")
        );
        let e = parse_one(" ; nothing\n").unwrap_err();
        assert_eq!(
            (e.line, e.column, e.message.as_str()),
            (2, 1, "expected an s-expression, found end of input")
        );
        assert_eq!(parse_one("x)").unwrap_err().column, 2);
        let deep = format!("{}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(
            error(&deep).2,
            "s-expression nested more than 200 levels deep"
        );
        let fits = format!("{}{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
        assert!(parse_one(&fits).is_ok());
        assert_eq!(
            error(&"#;".repeat(1000)).2,
            "s-expression nested more than 200 levels deep"
        );
    }

    #[test]
    fn printing_quotes_only_when_needed() {
        let cases = [
            ("plain", "plain"),
            ("./a-b@c", "./a-b@c"),
            ("", "\"\""),
            ("a b", "\"a b\""),
            ("(x)", "\"(x)\""),
            ("a;b", "\"a;b\""),
            ("C:\\obuilder", "\"C:\\\\obuilder\""),
            ("say \"hi\"\n", "\"say \\\"hi\\\"\\n\""),
            ("#|", "\"#|\""),
            ("a|#", "\"a|#\""),
            ("\u{1}\u{7f}\t\r\u{8}", "\"\\001\\127\\t\\r\\b\""),
            ("é", "é"),
        ];
        for (text, printed) in cases {
            assert_eq!(quote_atom(text), printed);
            assert_eq!(atom(printed), text, "reading back {printed}");
        }
        let tree = Sexp::list(vec![Sexp::atom("a b"), Sexp::list(vec![]), Sexp::atom("c")]);
        assert_eq!(tree.to_string(), "(\"a b\" () c)");
        assert!(
            parse_one(&tree.to_string())
                .unwrap()
                .eq_ignoring_spans(&tree)
        );
    }
}
