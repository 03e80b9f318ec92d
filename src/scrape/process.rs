//! Map, filter and reduce of the scraped items into the processed file.
//!
//! Map: each price is also given in a second currency at a fixed rate. Filter: items priced
//! outside `[min_price, max_price]` are left out. Reduce: the count and the sums of the prices
//! and of the converted prices. Every item and the file carry the run's UTC timestamp.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::parse::Item;

/// One product as the queue carries it and `POST /api/products` accepts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub title: String,
    pub price: f64,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scraped_at: Option<String>,
}

/// The processed file: what `--out` writes, FTP carries and a node imports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessedFile {
    /// The first listing page.
    pub source: String,
    pub scraped_at: String,
    pub currency: String,
    pub converted_currency: String,
    pub rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<f64>,
    pub count: usize,
    pub total: f64,
    pub total_converted: f64,
    pub items: Vec<Product>,
}

/// The map and filter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Processing {
    /// Currency of the prices.
    pub currency: String,
    /// Currency prices are converted to.
    pub to_currency: String,
    /// Units of `to_currency` per unit of `currency`.
    pub rate: f64,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
}

impl Processing {
    /// Whether `price` is within the range.
    pub fn keeps(&self, price: f64) -> bool {
        self.min_price.is_none_or(|min| price >= min) && self.max_price.is_none_or(|max| price <= max)
    }
}

/// A timestamp in the form the files and messages use: RFC 3339, UTC, milliseconds.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Maps, filters and reduces `items` scraped from `source` at `scraped_at`.
pub fn process(items: &[Item], source: &str, scraped_at: DateTime<Utc>, p: &Processing) -> ProcessedFile {
    let at = timestamp(scraped_at);
    let items: Vec<Product> = items
        .iter()
        .filter(|item| p.keeps(item.price))
        .map(|item| Product {
            title: item.title.clone(),
            price: item.price,
            currency: item.currency.clone(),
            converted_price: Some(round_cents(item.price * p.rate)),
            converted_currency: Some(p.to_currency.clone()),
            availability: item.availability.clone(),
            rating: item.rating,
            link: item.link.clone(),
            scraped_at: Some(at.clone()),
        })
        .collect();
    ProcessedFile {
        source: source.to_string(),
        scraped_at: at,
        currency: p.currency.clone(),
        converted_currency: p.to_currency.clone(),
        rate: p.rate,
        min_price: p.min_price,
        max_price: p.max_price,
        count: items.len(),
        total: round_cents(items.iter().map(|i| i.price).sum()),
        total_converted: round_cents(items.iter().filter_map(|i| i.converted_price).sum()),
        items,
    }
}

/// Rounds an amount to whole cents.
pub fn round_cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

/// The AMQP `message_id` of the item at `position` (0-based) in a run's file: a SHA-256 hex of
/// the run's timestamp, the position and the item's link (or title), so that it is the same
/// for every delivery of that item and differs between items and between runs.
pub fn message_id(file: &ProcessedFile, position: usize) -> String {
    let item = &file.items[position];
    let key = item.link.as_deref().unwrap_or(&item.title);
    let digest = Sha256::digest(format!("{}|{position}|{key}", file.scraped_at).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(title: &str, price: f64) -> Item {
        Item {
            title: title.into(),
            price,
            currency: "GBP".into(),
            availability: Some("In stock".into()),
            rating: Some(3),
            link: Some(format!("https://shop.test/{title}")),
        }
    }

    fn processing(min: Option<f64>, max: Option<f64>) -> Processing {
        Processing { currency: "GBP".into(), to_currency: "EUR".into(), rate: 1.2, min_price: min, max_price: max }
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T12:30:00.250Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn map_converts_each_price_and_reduce_sums_both() {
        let items = [item("a", 51.77), item("b", 10.0), item("c", 0.05)];
        let file = process(&items, "https://shop.test/page-1.html", at(), &processing(None, None));
        let converted: Vec<Option<f64>> = file.items.iter().map(|i| i.converted_price).collect();
        // 51.77 × 1.2 = 62.124 → 62.12; 0.05 × 1.2 = 0.06.
        assert_eq!(converted, [Some(62.12), Some(12.0), Some(0.06)]);
        assert_eq!(file.count, 3);
        assert_eq!(file.total, 61.82);
        assert_eq!(file.total_converted, 74.18);
        assert_eq!(file.scraped_at, "2026-05-01T12:30:00.250Z");
        assert!(file.items.iter().all(|i| i.scraped_at.as_deref() == Some("2026-05-01T12:30:00.250Z")));
        assert!(file.items.iter().all(|i| i.converted_currency.as_deref() == Some("EUR")));
        assert_eq!((file.currency.as_str(), file.converted_currency.as_str(), file.rate), ("GBP", "EUR", 1.2));
    }

    #[test]
    fn filter_keeps_the_inclusive_price_range() {
        let items = [item("a", 9.99), item("b", 10.0), item("c", 25.5), item("d", 50.0), item("e", 50.01)];
        let file = process(&items, "s", at(), &processing(Some(10.0), Some(50.0)));
        let titles: Vec<&str> = file.items.iter().map(|i| i.title.as_str()).collect();
        assert_eq!(titles, ["b", "c", "d"]);
        assert_eq!((file.count, file.total, file.total_converted), (3, 85.5, 102.6));
        assert_eq!((file.min_price, file.max_price), (Some(10.0), Some(50.0)));

        let only_min = process(&items, "s", at(), &processing(Some(50.0), None));
        assert_eq!(only_min.items.iter().map(|i| i.price).collect::<Vec<_>>(), [50.0, 50.01]);
        let nothing = process(&items, "s", at(), &processing(Some(100.0), None));
        assert_eq!((nothing.count, nothing.total, nothing.total_converted), (0, 0.0, 0.0));
    }

    #[test]
    fn the_file_is_the_agreed_json() {
        let file = process(&[item("a", 1.5)], "https://shop.test/", at(), &processing(None, Some(2.0)));
        let json: serde_json::Value = serde_json::to_value(&file).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "source": "https://shop.test/", "scraped_at": "2026-05-01T12:30:00.250Z",
                "currency": "GBP", "converted_currency": "EUR", "rate": 1.2, "max_price": 2.0,
                "count": 1, "total": 1.5, "total_converted": 1.8,
                "items": [{"title": "a", "price": 1.5, "currency": "GBP", "converted_price": 1.8,
                           "converted_currency": "EUR", "availability": "In stock", "rating": 3,
                           "link": "https://shop.test/a", "scraped_at": "2026-05-01T12:30:00.250Z"}]
            })
        );
    }

    #[test]
    fn message_ids_differ_per_item_and_per_run_and_are_short_hex() {
        let items = [item("a", 1.0), item("a", 1.0), item("b", 2.0)];
        let run1 = process(&items, "s", at(), &processing(None, None));
        let run2 = process(&items, "s", at() + chrono::Duration::milliseconds(1), &processing(None, None));
        let ids: Vec<String> =
            (0..3).map(|i| message_id(&run1, i)).chain((0..3).map(|i| message_id(&run2, i))).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 6);
        assert!(ids.iter().all(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(message_id(&run1, 2), message_id(&run1.clone(), 2), "the same item gets the same id");
    }
}
