//! Fetching listing pages politely and following the "next" link.
//!
//! One request at a time, a pause of `delay` between requests, a User-Agent that names
//! labctl, a timeout per request, and a few retries (with a growing pause) of a page that
//! failed with a connection error, 429 or 5xx.

use std::collections::HashSet;
use std::time::Duration;

use url::Url;

use super::parse::{parse_listing, Item, Profile};
use super::progress::Progress;

/// Largest page read, so a wrong URL cannot fill memory.
const MAX_PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest pause between two attempts at one page.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to fetch.
#[derive(Debug, Clone)]
pub struct Politeness {
    pub delay: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub user_agent: String,
}

/// Why a scrape produced nothing to use.
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    #[error("cannot read the first page {url}: {error}")]
    FirstPage { url: Url, error: FetchError },
    #[error("no item on the first page {url} matches the item selector {selector:?}: check [scrape.selectors] item")]
    NoItems { url: Url, selector: String },
    #[error("every one of the {bad} items found was bad (reasons logged above); nothing to output")]
    AllBad { bad: usize },
}

/// One failed request.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
}

impl FetchError {
    /// Whether trying again may help.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Status(code) => *code == 429 || *code >= 500,
            FetchError::Transport(_) => true,
        }
    }
}

/// What a scrape found.
#[derive(Debug, Clone, Default)]
pub struct Crawl {
    /// The valid items, in page order.
    pub items: Vec<Item>,
    /// Items left out as bad.
    pub bad: usize,
    /// Listing pages read.
    pub pages: u32,
}

/// Reads up to `pages` listing pages from `start`, following the profile's "next" link.
///
/// A first page that cannot be read, or has no item at all, or a run in which every item is
/// bad, is an error. A later page that cannot be read ends the scrape with what was read.
pub fn crawl(
    start: &Url,
    pages: u32,
    profile: &Profile,
    polite: &Politeness,
    progress: &Progress,
) -> Result<Crawl, CrawlError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(polite.timeout))
        .user_agent(polite.user_agent.as_str())
        .http_status_as_error(false)
        .build()
        .into();
    let mut crawl = Crawl::default();
    let mut visited = HashSet::new();
    let mut url = start.clone();
    for page in 1..=pages {
        if page > 1 {
            std::thread::sleep(polite.delay);
        }
        visited.insert(url.clone());
        let (html, final_url) = match fetch_with_retries(&agent, &url, polite, progress) {
            Ok(fetched) => fetched,
            Err(error) if page == 1 => return Err(CrawlError::FirstPage { url, error }),
            Err(error) => {
                progress.warn(&format!(
                    "page {page} ({url}) failed: {error}; stopping with the items of {} pages",
                    page - 1
                ));
                break;
            }
        };
        let listing = parse_listing(&html, &final_url, profile);
        if page == 1 && listing.items.is_empty() {
            return Err(CrawlError::NoItems { url, selector: profile.item.source().to_string() });
        }
        for bad in listing.bad() {
            let title = bad.title.as_deref().map(|t| format!(" ({t:?})")).unwrap_or_default();
            progress.warn(&format!("page {page}, item {}{title} skipped: {}", bad.position, bad.reason));
        }
        let (valid, bad) = (listing.valid().count(), listing.bad().count());
        crawl.items.extend(listing.valid().cloned());
        crawl.bad += bad;
        crawl.pages = page;
        progress.page_done(page, &final_url, valid, bad);
        match listing.next {
            Some(next) if visited.contains(&next) => {
                progress.warn(&format!("page {page}'s next link {next} was read already; stopping"));
                break;
            }
            Some(next) => url = next,
            None => break,
        }
    }
    if crawl.items.is_empty() && crawl.bad > 0 {
        return Err(CrawlError::AllBad { bad: crawl.bad });
    }
    Ok(crawl)
}

/// GETs `url`, trying again after transient failures: the page's text and its final URL
/// (after redirects), against which its links are resolved.
fn fetch_with_retries(
    agent: &ureq::Agent,
    url: &Url,
    polite: &Politeness,
    progress: &Progress,
) -> Result<(String, Url), FetchError> {
    let mut attempt = 0;
    loop {
        match fetch(agent, url) {
            Ok(page) => return Ok(page),
            Err(e) if e.is_transient() && attempt < polite.retries => {
                attempt += 1;
                let pause = backoff(polite.delay, attempt);
                progress.warn(&format!(
                    "{url}: {e}; trying again in {} ms ({attempt} of {})",
                    pause.as_millis(),
                    polite.retries
                ));
                std::thread::sleep(pause);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pause before retry `attempt` (1, 2, …): twice the previous, from at least 250 ms.
fn backoff(delay: Duration, attempt: u32) -> Duration {
    let base = delay.max(Duration::from_millis(250));
    base.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF)
}

fn fetch(agent: &ureq::Agent, url: &Url) -> Result<(String, Url), FetchError> {
    use ureq::ResponseExt;
    let mut response = agent.get(url.as_str()).call().map_err(|e| FetchError::Transport(e.to_string()))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(FetchError::Status(status));
    }
    let final_url = Url::parse(&response.get_uri().to_string()).unwrap_or_else(|_| url.clone());
    let bytes = response
        .body_mut()
        .with_config()
        .limit(MAX_PAGE_BYTES)
        .read_to_vec()
        .map_err(|e| FetchError::Transport(format!("reading the page: {e}")))?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), final_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_delay_and_is_capped() {
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(backoff(Duration::from_millis(500), 1)), 1000);
        assert_eq!(ms(backoff(Duration::from_millis(500), 2)), 2000);
        assert_eq!(ms(backoff(Duration::ZERO, 1)), 500);
        assert_eq!(backoff(Duration::from_millis(500), 40), MAX_BACKOFF);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(FetchError::Status(503).is_transient());
        assert!(FetchError::Status(429).is_transient());
        assert!(FetchError::Transport("connection refused".into()).is_transient());
        assert!(!FetchError::Status(404).is_transient());
        assert!(!FetchError::Status(403).is_transient());
    }
}
