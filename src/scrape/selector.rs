//! CSS selectors from the configuration, matched with `select`.
//!
//! `select` matches nodes with predicates built in code; a shop profile is text, so this module
//! parses the usual subset of CSS into a matcher: type (`p`), universal (`*`), class (`.price`),
//! id (`#main`), attribute presence and value (`[data-rating]`, `[rel=next]`, `[rel="next"]`),
//! descendant (space) and child (`>`) combinators, and `,` between alternatives. A selector may
//! end in `::attr(NAME)` (read that attribute of the matched element) or `::text` (its text,
//! the default) — the convention of Scrapy and parsel.

use select::document::Document;
use select::node::Node;

/// A parsed selector and what to read from the element it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    source: String,
    alternatives: Vec<Complex>,
    read: Read,
}

/// What a selector reads from the element it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The text of the element and its descendants, whitespace collapsed and trimmed.
    Text,
    /// One attribute's value, trimmed.
    Attr(String),
}

/// Compound selectors joined by combinators: `compounds[i]` relates to `compounds[i + 1]` by
/// `combinators[i]`.
#[derive(Debug, Clone, PartialEq)]
struct Complex {
    compounds: Vec<Compound>,
    combinators: Vec<Combinator>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Combinator {
    Descendant,
    Child,
}

/// Conditions on one element: `tag.class#id[attr=value]`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Compound {
    tag: Option<String>,
    id: Option<String>,
    classes: Vec<String>,
    attrs: Vec<(String, Option<String>)>,
}

/// A selector that cannot be parsed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Selector {
    /// Parses `source`; an empty selector is an error.
    pub fn parse(source: &str) -> Result<Selector, SelectorError> {
        let fail = |reason: String| SelectorError { selector: source.to_string(), reason };
        let (css, read) = match source.rsplit_once("::") {
            None => (source, Read::Text),
            Some((css, "text")) => (css, Read::Text),
            Some((css, suffix)) => {
                let name = suffix
                    .strip_prefix("attr(")
                    .and_then(|s| s.strip_suffix(')'))
                    .map(str::trim)
                    .filter(|name| !name.is_empty() && name.chars().all(is_ident_char))
                    .ok_or_else(|| fail(format!("unknown ending ::{suffix} (use ::text or ::attr(NAME))")))?;
                (css, Read::Attr(name.to_ascii_lowercase()))
            }
        };
        let alternatives = Parser { chars: css.chars().collect(), pos: 0 }.selector_list().map_err(fail)?;
        Ok(Selector { source: source.to_string(), alternatives, read })
    }

    /// The selector as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What this selector reads.
    pub fn read(&self) -> &Read {
        &self.read
    }

    /// Whether `node` is an element this selector matches.
    pub fn matches(&self, node: &Node) -> bool {
        self.alternatives.iter().any(|c| c.matches(node, c.compounds.len() - 1))
    }

    /// The elements below `scope` that match, in document order.
    pub fn find<'a>(&'a self, scope: &Node<'a>) -> impl Iterator<Item = Node<'a>> + 'a {
        scope.find(move |node: &Node| self.matches(node))
    }

    /// The elements of the whole document that match, in document order.
    pub fn find_in<'a>(&'a self, doc: &'a Document) -> impl Iterator<Item = Node<'a>> + 'a {
        doc.find(move |node: &Node| self.matches(node))
    }

    /// The first non-empty value this selector reads below `scope`, if any.
    pub fn extract(&self, scope: &Node) -> Option<String> {
        self.find(scope).find_map(|node| self.read_from(&node))
    }

    /// The first non-empty value this selector reads in the whole document, if any.
    pub fn extract_in(&self, doc: &Document) -> Option<String> {
        self.find_in(doc).find_map(|node| self.read_from(&node))
    }

    fn read_from(&self, node: &Node) -> Option<String> {
        let value = match &self.read {
            Read::Text => collapse_whitespace(&node.text()),
            Read::Attr(name) => node.attr(name)?.trim().to_string(),
        };
        (!value.is_empty()).then_some(value)
    }
}

impl Complex {
    /// Whether `node` matches `compounds[..=i]`, with `compounds[i]` on `node` itself.
    fn matches(&self, node: &Node, i: usize) -> bool {
        if !self.compounds[i].matches(node) {
            return false;
        }
        if i == 0 {
            return true;
        }
        match self.combinators[i - 1] {
            Combinator::Child => node.parent().is_some_and(|parent| self.matches(&parent, i - 1)),
            Combinator::Descendant => {
                let mut ancestor = node.parent();
                while let Some(a) = ancestor {
                    if self.matches(&a, i - 1) {
                        return true;
                    }
                    ancestor = a.parent();
                }
                false
            }
        }
    }
}

impl Compound {
    fn matches(&self, node: &Node) -> bool {
        let Some(name) = node.name() else { return false };
        if self.tag.as_ref().is_some_and(|tag| !tag.eq_ignore_ascii_case(name)) {
            return false;
        }
        if self.id.as_ref().is_some_and(|id| node.attr("id") != Some(id.as_str())) {
            return false;
        }
        if !self.classes.is_empty() {
            let classes: Vec<&str> = node.attr("class").unwrap_or("").split_whitespace().collect();
            if !self.classes.iter().all(|c| classes.contains(&c.as_str())) {
                return false;
            }
        }
        self.attrs.iter().all(|(name, value)| match (node.attr(name), value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(actual), Some(wanted)) => actual == wanted,
        })
    }
}

/// Text as a reader sees it: runs of whitespace (newlines, indentation) become one space.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

/// A recursive-descent parser over the CSS part of a selector.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn selector_list(mut self) -> Result<Vec<Complex>, String> {
        let mut list = vec![self.complex()?];
        while self.peek() == Some(',') {
            self.pos += 1;
            list.push(self.complex()?);
        }
        match self.peek() {
            None => Ok(list),
            Some(c) => Err(self.unexpected(c)),
        }
    }

    fn complex(&mut self) -> Result<Complex, String> {
        self.skip_spaces();
        let mut complex = Complex { compounds: vec![self.compound()?], combinators: Vec::new() };
        loop {
            let spaced = self.skip_spaces();
            let combinator = match self.peek() {
                None | Some(',') => return Ok(complex),
                Some('>') => {
                    self.pos += 1;
                    self.skip_spaces();
                    Combinator::Child
                }
                Some(_) if spaced => Combinator::Descendant,
                Some(c) => return Err(self.unexpected(c)),
            };
            complex.combinators.push(combinator);
            complex.compounds.push(self.compound()?);
        }
    }

    fn compound(&mut self) -> Result<Compound, String> {
        let mut compound = Compound::default();
        let start = self.pos;
        match self.peek() {
            Some('*') => self.pos += 1,
            Some(c) if is_ident_char(c) => compound.tag = Some(self.ident()?.to_ascii_lowercase()),
            _ => {}
        }
        loop {
            match self.peek() {
                Some('.') => {
                    self.pos += 1;
                    compound.classes.push(self.ident()?);
                }
                Some('#') => {
                    self.pos += 1;
                    compound.id = Some(self.ident()?);
                }
                Some('[') => {
                    self.pos += 1;
                    compound.attrs.push(self.attribute()?);
                }
                _ => break,
            }
        }
        if self.pos == start {
            return Err(match self.peek() {
                None => "a selector is missing (empty, or ends in a combinator)".to_string(),
                Some(c) => self.unexpected(c),
            });
        }
        Ok(compound)
    }

    /// `name]` or `name=value]`, after the `[`.
    fn attribute(&mut self) -> Result<(String, Option<String>), String> {
        self.skip_spaces();
        let name = self.ident()?.to_ascii_lowercase();
        self.skip_spaces();
        let value = match self.peek() {
            Some('=') => {
                self.pos += 1;
                self.skip_spaces();
                let value = match self.peek() {
                    Some(quote @ ('"' | '\'')) => {
                        self.pos += 1;
                        let start = self.pos;
                        while self.peek().is_some_and(|c| c != quote) {
                            self.pos += 1;
                        }
                        if self.peek().is_none() {
                            return Err("unterminated quoted value".into());
                        }
                        let value: String = self.chars[start..self.pos].iter().collect();
                        self.pos += 1;
                        value
                    }
                    _ => self.ident()?,
                };
                self.skip_spaces();
                Some(value)
            }
            _ => None,
        };
        match self.peek() {
            Some(']') => {
                self.pos += 1;
                Ok((name, value))
            }
            Some(c) => Err(self.unexpected(c)),
            None => Err("unterminated [attribute]".into()),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(match self.peek() {
                None => "a name is missing at the end".to_string(),
                Some(c) => self.unexpected(c),
            });
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// Skips whitespace; whether there was any.
    fn skip_spaces(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn unexpected(&self, c: char) -> String {
        format!("unexpected {c:?} at character {} (supported: tag, *, .class, #id, [attr], [attr=value], descendant, >, ',')", self.pos + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTML: &str = r#"<html><body>
        <div id="main" class="shop">
          <article class="product_pod">
            <p class="star-rating Three"><i></i></p>
            <h3><a href="one/index.html" title="The Full Title">The Full ...</a></h3>
            <div class="product_price"><p class="price_color">  £51.77 </p></div>
          </article>
          <ul class="pager"><li class="next"><a rel="next" href="page-2.html">next</a></li></ul>
        </div>
        <p class="price_color">£0.00</p>
    </body></html>"#;

    fn values(selector: &str) -> Vec<String> {
        let doc = Document::from(HTML);
        let s = Selector::parse(selector).unwrap();
        s.find_in(&doc).map(|n| n.attr("href").or(n.attr("class")).unwrap_or(n.name().unwrap()).to_string()).collect()
    }

    fn extract(selector: &str) -> Option<String> {
        let doc = Document::from(HTML);
        Selector::parse(selector).unwrap().extract_in(&doc)
    }

    #[test]
    fn compounds_and_combinators_match_like_css() {
        assert_eq!(values("article.product_pod"), ["product_pod"]);
        assert_eq!(values("p.price_color"), ["price_color", "price_color"]);
        assert_eq!(values(".product_price .price_color"), ["price_color"]);
        assert_eq!(values("#main > article > h3 > a"), ["one/index.html"]);
        assert!(values("#main > h3").is_empty(), "h3 is a grandchild of #main, not a child");
        assert_eq!(values("div.shop h3 a"), ["one/index.html"]);
        assert_eq!(values("p.star-rating.Three"), ["star-rating Three"]);
        assert!(values("p.star-rating.Four").is_empty());
        assert_eq!(values("a[rel=next]"), ["page-2.html"]);
        assert_eq!(values("a[rel='next'], h3 a"), ["one/index.html", "page-2.html"]);
        assert_eq!(values("LI.next *"), ["page-2.html"]);
    }

    #[test]
    fn reads_text_collapsed_or_an_attribute() {
        assert_eq!(extract(".product_price .price_color").as_deref(), Some("£51.77"));
        assert_eq!(extract("h3 a::text").as_deref(), Some("The Full ..."));
        assert_eq!(extract("h3 a::attr(title)").as_deref(), Some("The Full Title"));
        assert_eq!(extract("p.star-rating::attr(class)").as_deref(), Some("star-rating Three"));
        assert_eq!(extract("h3 a::attr(data-missing)"), None);
        assert_eq!(extract("p.star-rating"), None, "an element without text reads as missing");
        assert_eq!(extract("table"), None);
    }

    #[test]
    fn bad_selectors_are_errors_with_a_reason() {
        for bad in ["", "  ", "a >", "> a", "a:hover", "a[rel", "a[rel='x]", "p::attr()", "p::html", "a,,b", ".", "a]"]
        {
            let err = Selector::parse(bad).expect_err(bad);
            assert!(!err.reason.is_empty(), "{bad:?}");
        }
        let err = Selector::parse("a:hover").unwrap_err();
        assert!(err.to_string().contains("':'"), "{err}");
    }
}
