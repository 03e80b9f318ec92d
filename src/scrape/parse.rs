//! Reading a listing page: the items on it, each validated, and the link to the next page.

use select::document::Document;
use url::Url;

use super::selector::{Selector, SelectorError};

/// Where the fields of an item are in a shop's listing pages, and the shop's currency.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// One match per item; the field selectors below are looked up inside it.
    pub item: Selector,
    pub title: Selector,
    pub price: Selector,
    pub availability: Option<Selector>,
    pub rating: Option<Selector>,
    pub link: Option<Selector>,
    /// The link to the next listing page (on the page, not inside an item).
    pub next: Option<Selector>,
    /// ISO 4217 code of prices that show neither a symbol nor a code.
    pub currency: String,
}

/// The selectors of a profile as text; an empty optional one means "not scraped".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorTexts {
    pub item: String,
    pub title: String,
    pub price: String,
    pub availability: String,
    pub rating: String,
    pub link: String,
    pub next: String,
}

impl SelectorTexts {
    /// books.toscrape.com, the default target.
    pub fn books_toscrape() -> SelectorTexts {
        SelectorTexts {
            item: "article.product_pod".into(),
            title: "h3 a::attr(title)".into(),
            price: ".product_price .price_color".into(),
            availability: ".product_price .availability".into(),
            rating: "p.star-rating::attr(class)".into(),
            link: "h3 a::attr(href)".into(),
            next: "li.next a::attr(href)".into(),
        }
    }
}

impl Profile {
    /// Parses every selector; `currency` is an upper-case ISO 4217 code.
    pub fn new(texts: &SelectorTexts, currency: &str) -> Result<Profile, SelectorError> {
        let optional = |s: &str| if s.trim().is_empty() { Ok(None) } else { Selector::parse(s).map(Some) };
        Ok(Profile {
            item: Selector::parse(&texts.item)?,
            title: Selector::parse(&texts.title)?,
            price: Selector::parse(&texts.price)?,
            availability: optional(&texts.availability)?,
            rating: optional(&texts.rating)?,
            link: optional(&texts.link)?,
            next: optional(&texts.next)?,
            currency: currency.to_string(),
        })
    }
}

/// One valid item of a listing page.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub title: String,
    pub price: f64,
    pub currency: String,
    pub availability: Option<String>,
    /// 1 to 5 stars.
    pub rating: Option<i32>,
    /// Absolute URL of the item's page.
    pub link: Option<String>,
}

/// An item that failed validation and is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadItem {
    /// 1 for the first item on the page.
    pub position: usize,
    /// The item's title, when it has one, to find it on the page.
    pub title: Option<String>,
    pub reason: String,
}

/// What a listing page holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// Every match of the item selector, in page order.
    pub items: Vec<Result<Item, BadItem>>,
    /// The next page, made absolute.
    pub next: Option<Url>,
}

impl Listing {
    pub fn valid(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter_map(|r| r.as_ref().ok())
    }

    pub fn bad(&self) -> impl Iterator<Item = &BadItem> {
        self.items.iter().filter_map(|r| r.as_ref().err())
    }
}

/// Reads the items and the next link of the listing page `html`, fetched from `page_url`
/// (against which relative links are resolved).
pub fn parse_listing(html: &str, page_url: &Url, profile: &Profile) -> Listing {
    let doc = Document::from(html);
    let items = profile
        .item
        .find_in(&doc)
        .enumerate()
        .map(|(i, node)| {
            let title = profile.title.extract(&node);
            validate(&node, title.clone(), page_url, profile).map_err(|reason| BadItem {
                position: i + 1,
                title,
                reason,
            })
        })
        .collect();
    let next = profile.next.as_ref().and_then(|s| s.extract_in(&doc)).and_then(|href| page_url.join(&href).ok());
    Listing { items, next }
}

fn validate(
    node: &select::node::Node,
    title: Option<String>,
    page_url: &Url,
    profile: &Profile,
) -> Result<Item, String> {
    let title = title.ok_or("missing title")?;
    let price_text = profile.price.extract(node).ok_or("missing price")?;
    let (price, currency) = parse_price(&price_text, &profile.currency)
        .map_err(|reason| format!("unparsable price {price_text:?}: {reason}"))?;
    if currency != profile.currency {
        return Err(format!("price {price_text:?} is in {currency}, not the shop's currency {}", profile.currency));
    }
    let link = match profile.link.as_ref().and_then(|s| s.extract(node)) {
        Some(href) => Some(page_url.join(&href).map_err(|e| format!("invalid link {href:?}: {e}"))?.to_string()),
        None => None,
    };
    Ok(Item {
        title,
        price,
        currency,
        availability: profile.availability.as_ref().and_then(|s| s.extract(node)),
        rating: profile.rating.as_ref().and_then(|s| s.extract(node)).and_then(|text| parse_rating(&text)),
        link,
    })
}

/// Currency symbols and the code they stand for.
const SYMBOLS: [(char, &str); 4] = [('£', "GBP"), ('€', "EUR"), ('$', "USD"), ('¥', "JPY")];

/// Reads a price such as `£51.77`, `51,77 €`, `USD 1,234.50` or `1.234,50`: its amount and its
/// currency (from a symbol or a three-letter code, else `default_currency`).
pub fn parse_price(text: &str, default_currency: &str) -> Result<(f64, String), String> {
    let chars: Vec<char> = text.chars().collect();
    let starts: Vec<usize> =
        (0..chars.len()).filter(|&i| chars[i].is_ascii_digit() && (i == 0 || !is_number_char(chars[i - 1]))).collect();
    let start = match starts.as_slice() {
        [] => return Err("no number".into()),
        [one] => *one,
        _ => return Err("more than one number".into()),
    };
    let sign = chars[..start].iter().rev().find(|c| !c.is_whitespace() && !c.is_alphabetic() && !is_symbol(**c));
    if sign == Some(&'-') {
        return Err("negative".into());
    }
    let end = (start..chars.len()).find(|&i| !is_number_char(chars[i])).unwrap_or(chars.len());
    let number: String = chars[start..end].iter().collect();
    let number = number.trim_end_matches(['.', ',']);
    let amount = parse_amount(number).ok_or_else(|| format!("{number:?} is not a number"))?;
    if !amount.is_finite() {
        return Err("not a finite number".into());
    }
    let rest: String = chars[..start].iter().chain(&chars[end..]).collect();
    let currency = currency_of(&rest).unwrap_or_else(|| default_currency.to_string());
    Ok((amount, currency))
}

fn is_symbol(c: char) -> bool {
    SYMBOLS.iter().any(|(symbol, _)| *symbol == c)
}

fn is_number_char(c: char) -> bool {
    c.is_ascii_digit() || c == '.' || c == ','
}

/// `1,234.50` and `1.234,50` are 1234.5; a lone separator followed by exactly three digits
/// groups thousands (`1,234`), otherwise it is the decimal point (`12,5`, `51.77`). Thousands
/// groups must have three digits, so `1.2.3` is not a number.
fn parse_amount(number: &str) -> Option<f64> {
    let separators: Vec<(usize, char)> = number.char_indices().filter(|(_, c)| !c.is_ascii_digit()).collect();
    let Some(&(last, last_char)) = separators.last() else { return number.parse().ok() };
    let mixed = separators.iter().any(|&(_, c)| c != last_char);
    let thousands_only = !mixed && (separators.len() > 1 || last_char == ',' && number.len() - last - 1 == 3);
    let (int, frac) = if thousands_only { (number, "0") } else { (&number[..last], &number[last + 1..]) };
    if frac.is_empty() || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let groups: Vec<&str> = int.split(['.', ',']).collect();
    if groups.len() > 1 {
        let mut kinds = int.chars().filter(|c| !c.is_ascii_digit());
        let first = kinds.next();
        if kinds.any(|c| Some(c) != first) || groups[0].len() > 3 || groups[1..].iter().any(|g| g.len() != 3) {
            return None;
        }
    }
    format!("{}.{frac}", groups.concat()).parse().ok()
}

/// The currency named around a price: a symbol or an upper-case three-letter code.
fn currency_of(rest: &str) -> Option<String> {
    if let Some((_, code)) = SYMBOLS.iter().find(|(symbol, _)| rest.contains(*symbol)) {
        return Some(code.to_string());
    }
    rest.split(|c: char| !c.is_ascii_alphabetic())
        .find(|word| word.len() == 3 && word.chars().all(|c| c.is_ascii_uppercase()))
        .map(str::to_string)
}

/// Reads a 1–5 star rating from text such as `star-rating Three`, `4`, `4.0` or `3/5`: the
/// first word that is a number word or a number from 1 to 5.
pub fn parse_rating(text: &str) -> Option<i32> {
    const WORDS: [&str; 5] = ["one", "two", "three", "four", "five"];
    text.split(|c: char| !(c.is_alphanumeric() || c == '.')).find_map(|word| {
        let stars = match WORDS.iter().position(|w| w.eq_ignore_ascii_case(word)) {
            Some(i) => i as i32 + 1,
            None => {
                let n: f64 = word.parse().ok()?;
                if n.fract() != 0.0 {
                    return None;
                }
                n as i32
            }
        };
        (1..=5).contains(&stars).then_some(stars)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_1: &str = include_str!("../../tests/fixtures/books/catalogue/page-1.html");
    const PAGE_2: &str = include_str!("../../tests/fixtures/books/catalogue/page-2.html");
    const PAGE_3: &str = include_str!("../../tests/fixtures/books/catalogue/page-3.html");

    fn books() -> Profile {
        Profile::new(&SelectorTexts::books_toscrape(), "GBP").unwrap()
    }

    fn url(page: u32) -> Url {
        Url::parse(&format!("https://books.toscrape.com/catalogue/page-{page}.html")).unwrap()
    }

    #[test]
    fn a_listing_page_gives_trimmed_fields_numbers_and_absolute_links() {
        let listing = parse_listing(PAGE_1, &url(1), &books());
        assert_eq!(listing.bad().count(), 0, "{:?}", listing.bad().collect::<Vec<_>>());
        let items: Vec<&Item> = listing.valid().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(
            items[0],
            &Item {
                title: "A Light in the Attic".into(),
                price: 51.77,
                currency: "GBP".into(),
                availability: Some("In stock".into()),
                rating: Some(3),
                link: Some("https://books.toscrape.com/catalogue/a-light-in-the-attic_1000/index.html".into()),
            }
        );
        let summary: Vec<(&str, f64, Option<i32>)> =
            items.iter().map(|i| (i.title.as_str(), i.price, i.rating)).collect();
        assert_eq!(
            summary,
            [
                ("A Light in the Attic", 51.77, Some(3)),
                ("Tipping the Velvet", 53.74, Some(1)),
                ("Soumission", 50.10, Some(1)),
                ("Sharp Objects", 47.82, Some(4)),
            ]
        );
        assert_eq!(listing.next.as_ref().map(Url::as_str), Some("https://books.toscrape.com/catalogue/page-2.html"));
    }

    #[test]
    fn broken_items_are_reported_with_their_reason_and_the_rest_kept() {
        let listing = parse_listing(PAGE_2, &url(2), &books());
        let bad: Vec<(usize, Option<&str>, &str)> =
            listing.bad().map(|b| (b.position, b.title.as_deref(), b.reason.as_str())).collect();
        assert_eq!(
            bad,
            [
                (2, Some("The Requiem Red"), "missing price"),
                (3, Some("The Dirty Little Secrets of Getting Your Dream Job"), "unparsable price \"£N/A\": no number"),
                (4, None, "missing title"),
                (6, Some("Olio"), "price \"$23.88\" is in USD, not the shop's currency GBP"),
            ]
        );
        let valid: Vec<(&str, f64)> = listing.valid().map(|i| (i.title.as_str(), i.price)).collect();
        assert_eq!(valid, [("Set Me Free", 17.46), ("Rip it Up and Start Again", 35.02)]);
        assert_eq!(listing.next.as_ref().map(Url::as_str), Some("https://books.toscrape.com/catalogue/page-3.html"));
    }

    #[test]
    fn the_last_page_has_no_next_link() {
        let listing = parse_listing(PAGE_3, &url(3), &books());
        assert_eq!(listing.valid().count(), 3);
        assert_eq!(listing.next, None);
        let out_of_stock = listing.valid().find(|i| i.title == "Mesaerion: The Best Science Fiction Stories 1800-1849");
        assert_eq!(out_of_stock.and_then(|i| i.availability.as_deref()), Some("Out of stock"));
    }

    #[test]
    fn prices_in_the_usual_notations() {
        let ok = |text: &str| parse_price(text, "GBP").unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(ok("£51.77"), (51.77, "GBP".into()));
        assert_eq!(ok("Â£51.77"), (51.77, "GBP".into()), "the pound sign read as Latin-1");
        assert_eq!(ok("  £ 0.99 "), (0.99, "GBP".into()));
        assert_eq!(ok("51,77 €"), (51.77, "EUR".into()));
        assert_eq!(ok("$1,234.50"), (1234.5, "USD".into()));
        assert_eq!(ok("1.234,50 EUR"), (1234.5, "EUR".into()));
        assert_eq!(ok("USD 1,234"), (1234.0, "USD".into()));
        assert_eq!(ok("12"), (12.0, "GBP".into()), "no symbol: the shop's currency");
        assert_eq!(ok("Price: 7.5."), (7.5, "GBP".into()));
        for bad in ["", "£", "N/A", "free", "£10 - £20", "-£5.00", "1.2.3,4", "£1,2,3.4.5"] {
            assert!(parse_price(bad, "GBP").is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn ratings_in_words_or_digits() {
        assert_eq!(parse_rating("star-rating Three"), Some(3));
        assert_eq!(parse_rating("star-rating five"), Some(5));
        assert_eq!(parse_rating("4"), Some(4));
        assert_eq!(parse_rating("4.0 stars"), Some(4));
        assert_eq!(parse_rating("3/5"), Some(3));
        assert_eq!(parse_rating("star-rating Zero"), None);
        assert_eq!(parse_rating("7"), None);
        assert_eq!(parse_rating("4.5"), None);
    }

    #[test]
    fn the_example_profile_for_another_shop_reads_its_layout() {
        let file = crate::config::FileConfig::load(Some(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/scrape-laptops.toml"
        ))))
        .unwrap();
        let s = file.scrape.selectors;
        let texts = SelectorTexts {
            item: s.item.unwrap(),
            title: s.title.unwrap(),
            price: s.price.unwrap(),
            availability: s.availability.unwrap_or_default(),
            rating: s.rating.unwrap(),
            link: s.link.unwrap(),
            next: s.next.unwrap(),
        };
        let profile = Profile::new(&texts, file.scrape.currency.as_deref().unwrap()).unwrap();
        let page = Url::parse("https://webscraper.io/test-sites/e-commerce/static/computers/laptops").unwrap();
        let listing = parse_listing(include_str!("../../tests/fixtures/laptops/laptops-page-1.html"), &page, &profile);
        type Row<'a> = (&'a str, f64, &'a str, Option<i32>, Option<&'a str>);
        let items: Vec<Row> = listing
            .valid()
            .map(|i| (i.title.as_str(), i.price, i.currency.as_str(), i.rating, i.link.as_deref()))
            .collect();
        assert_eq!(
            items,
            [
                (
                    "Asus VivoBook X441NA-GA190",
                    295.99,
                    "USD",
                    Some(3),
                    Some("https://webscraper.io/test-sites/e-commerce/static/product/31")
                ),
                (
                    "Prestigio SmartBook 133S Dark Grey",
                    299.0,
                    "USD",
                    Some(2),
                    Some("https://webscraper.io/test-sites/e-commerce/static/product/32")
                ),
                (
                    "Lenovo V110-15IAP",
                    1321.49,
                    "USD",
                    Some(4),
                    Some("https://webscraper.io/test-sites/e-commerce/static/product/34")
                ),
            ]
        );
        let bad: Vec<&str> = listing.bad().map(|b| b.reason.as_str()).collect();
        assert_eq!(bad, ["missing price"]);
        assert_eq!(
            listing.next.as_ref().map(Url::as_str),
            Some("https://webscraper.io/test-sites/e-commerce/static/computers/laptops?page=2")
        );
    }
}
