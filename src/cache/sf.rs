//! An RFC 8941 Dictionary parser, just large enough for targeted cache
//! fields such as `CDN-Cache-Control` (RFC 9213 §2.1), which are
//! Dictionaries and not `Cache-Control` lists: keys are lowercase, a
//! duplicate key keeps its last value, and any syntax error rejects the
//! whole field. Parameters are parsed and dropped; the cache reads none.

/// A member value (RFC 8941 §3.2). Kinds the cache never reads keep no
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// At most 15 digits (§3.3.1).
    Integer(i64),
    /// A Decimal (§3.3.2): a wrong type for every cache directive.
    Decimal,
    /// A String, unescaped (§3.3.3).
    String(String),
    /// A Token (§3.3.4).
    Token(String),
    /// A Byte Sequence (§3.3.5).
    Bytes,
    /// A Boolean (§3.3.6); a member without a value is `true` (§3.2).
    Boolean(bool),
    /// An Inner List (§3.1.1).
    InnerList,
}

/// Parses combined field lines as a Dictionary (§4.2, §4.2.2). `None` on
/// any error; an empty input gives an empty Dictionary. A repeated key
/// keeps its first position and its last value.
pub(crate) fn parse_dictionary(input: &[u8]) -> Option<Vec<(String, Item)>> {
    let mut p = Parser { s: input, pos: 0 };
    // §4.2: leading and trailing SP are discarded.
    p.skip_sp();
    let mut dict: Vec<(String, Item)> = Vec::new();
    while !p.at_end() {
        let key = p.key()?;
        let item = if p.eat(b'=') {
            p.item_or_inner_list()?
        } else {
            p.parameters()?;
            Item::Boolean(true)
        };
        match dict.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = item,
            None => dict.push((key, item)),
        }
        p.skip_ows();
        if p.at_end() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.skip_ows();
        if p.at_end() {
            return None; // a trailing comma
        }
    }
    Some(dict)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// §4.2.3.3: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
    fn key(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek() {
            Some(b) if b.is_ascii_lowercase() || b == b'*' => self.pos += 1,
            _ => return None,
        }
        while let Some(b) = self.peek() {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        // Only ASCII was accepted.
        String::from_utf8(self.s[start..self.pos].to_vec()).ok()
    }

    /// §4.2.1.1, §4.2.3: an Inner List or an Item, parameters dropped.
    fn item_or_inner_list(&mut self) -> Option<Item> {
        if self.peek() == Some(b'(') {
            self.inner_list()?;
            self.parameters()?;
            return Some(Item::InnerList);
        }
        let item = self.bare_item()?;
        self.parameters()?;
        Some(item)
    }

    /// §4.2.1.2
    fn inner_list(&mut self) -> Option<()> {
        self.pos += 1; // '('
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Some(());
            }
            self.bare_item()?;
            self.parameters()?;
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return None,
            }
        }
    }

    /// §4.2.3.2: `*( ";" *SP key [ "=" bare-item ] )`.
    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    /// §4.2.3.1
    fn bare_item(&mut self) -> Option<Item> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(Item::String),
            b':' => self.byte_sequence().map(|()| Item::Bytes),
            b'?' => self.boolean().map(Item::Boolean),
            b if b.is_ascii_alphabetic() || b == b'*' => Some(Item::Token(self.token())),
            _ => None,
        }
    }

    /// §4.2.4: Integer (at most 15 digits) or Decimal (at most 12 integer
    /// and 3 fractional digits).
    fn number(&mut self) -> Option<Item> {
        let negative = self.eat(b'-');
        let start = self.pos;
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        let mut dot = None;
        while let Some(b) = self.peek() {
            if b.is_ascii_digit() {
                self.pos += 1;
            } else if b == b'.' && dot.is_none() {
                if self.pos - start > 12 {
                    return None;
                }
                dot = Some(self.pos);
                self.pos += 1;
            } else {
                break;
            }
            let len = self.pos - start;
            if (dot.is_none() && len > 15) || len > 16 {
                return None;
            }
        }
        if let Some(dot) = dot {
            let fraction = self.pos - dot - 1;
            return (1..=3).contains(&fraction).then_some(Item::Decimal);
        }
        // At most 15 digits: always fits.
        let digits = std::str::from_utf8(&self.s[start..self.pos]).ok()?;
        let n: i64 = digits.parse().ok()?;
        Some(Item::Integer(if negative { -n } else { n }))
    }

    /// §4.2.5: printable ASCII, `\"` and `\\` the only escapes.
    fn string(&mut self) -> Option<String> {
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'\\' => {
                    let next = self.peek()?;
                    if next != b'"' && next != b'\\' {
                        return None;
                    }
                    self.pos += 1;
                    out.push(char::from(next));
                }
                b'"' => return Some(out),
                0x20..=0x7e => out.push(char::from(b)),
                _ => return None,
            }
        }
    }

    /// §4.2.6: the first character was checked by the caller.
    fn token(&mut self) -> String {
        let start = self.pos;
        self.pos += 1;
        while let Some(b) = self.peek() {
            if crate::directives::is_tchar(b) || b == b':' || b == b'/' {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.s[start..self.pos]
            .iter()
            .copied()
            .map(char::from)
            .collect()
    }

    /// §4.2.7: `:` base64 `:`; the content is checked, not decoded.
    fn byte_sequence(&mut self) -> Option<()> {
        self.pos += 1; // ':'
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b':' => return Some(()),
                b'+' | b'/' | b'=' => {}
                b if b.is_ascii_alphanumeric() => {}
                _ => return None,
            }
        }
    }

    /// §4.2.8
    fn boolean(&mut self) -> Option<bool> {
        self.pos += 1; // '?'
        let value = match self.peek()? {
            b'1' => true,
            b'0' => false,
            _ => return None,
        };
        self.pos += 1;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Option<Vec<(String, Item)>> {
        parse_dictionary(s.as_bytes())
    }

    fn value(s: &str, key: &str) -> Option<Item> {
        parse(s)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn members_are_booleans_integers_strings_and_tokens() {
        let d = parse("max-age=60, no-store, private=\"x-a, x-b\", a=tok/en:1, b=?0").unwrap();
        assert_eq!(
            d,
            vec![
                ("max-age".into(), Item::Integer(60)),
                ("no-store".into(), Item::Boolean(true)),
                ("private".into(), Item::String("x-a, x-b".into())),
                ("a".into(), Item::Token("tok/en:1".into())),
                ("b".into(), Item::Boolean(false)),
            ]
        );
        assert_eq!(value("a=-5", "a"), Some(Item::Integer(-5)));
        assert_eq!(value("a=1.5", "a"), Some(Item::Decimal));
        assert_eq!(value("a=:aGk=:", "a"), Some(Item::Bytes));
        assert_eq!(value("a=(1 \"x\" y);p", "a"), Some(Item::InnerList));
        assert_eq!(
            value("a=\"q\\\"\\\\\"", "a"),
            Some(Item::String("q\"\\".into()))
        );
    }

    #[test]
    fn a_duplicate_key_keeps_its_last_value() {
        assert_eq!(
            parse("max-age=1, max-age=600").unwrap(),
            vec![("max-age".into(), Item::Integer(600))]
        );
    }

    #[test]
    fn parameters_are_parsed_and_ignored() {
        assert_eq!(
            value("max-age=60;x=1;y, no-store;z=\"s\"", "max-age"),
            Some(Item::Integer(60))
        );
        assert!(parse("a;B=1").is_none(), "parameter keys are lowercase too");
    }

    #[test]
    fn whitespace_around_commas_is_allowed_and_empty_is_empty() {
        assert_eq!(parse("  a=1 ,\tb  ").unwrap().len(), 2);
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("   ").unwrap(), vec![]);
    }

    #[test]
    fn syntax_errors_reject_the_whole_field() {
        for bad in [
            "Max-Age=600",
            "max-age=60,",
            "max-age=60, ",
            ",max-age=60",
            "a,,b",
            "a=1234567890123456",
            "a=1234567890123.5",
            "a=1.2345",
            "a=1.",
            "a=-",
            "a=\"unterminated",
            "a=\"bad\\escape\"",
            "a=:not base64!:",
            "a=?2",
            "a=(1 2",
            "a=(1,2)",
            "a b",
            "a=1 b=2",
            "\ta=1",
            "a=%",
            "1a=1",
            "a=é",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} parsed as {:?}", parse(bad));
        }
        assert_eq!(
            value("a=123456789012345", "a"),
            Some(Item::Integer(123_456_789_012_345))
        );
        assert_eq!(value("a=123456789012.123", "a"), Some(Item::Decimal));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_dictionary(&input);
        }

        #[test]
        fn never_panics_on_sf_like_text(input in "[a-z0-9=,;:?()\"\\\\ .*/_-]{0,48}") {
            let _ = parse_dictionary(input.as_bytes());
        }
    }
}
