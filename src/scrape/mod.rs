//! `labctl scrape`: product listings of a shop → the processed file, the queue and FTP.
//!
//! The pipeline of one run:
//! 1. [`crawl`]: fetch listing pages politely (delay, User-Agent, timeout, retries), following
//!    the "next" link up to `--pages`;
//! 2. [`parse`]: read each item with the profile's CSS selectors ([`selector`]) and validate
//!    it (trimmed text, price as a number and a currency, rating 1–5, absolute link); bad
//!    items are logged with the reason and left out;
//! 3. [`process`]: map (second currency at `--rate`), filter (`--min-price/--max-price`),
//!    reduce (count, sums), UTC timestamp → the processed file, printed or written to `--out`;
//! 4. [`publish`] (`--publish`): each item to a durable RabbitMQ queue, confirmed;
//! 5. [`upload`] (`--upload-ftp`): the processed file to FTP, atomically.

pub mod crawl;
pub mod parse;
pub mod process;
mod progress;
pub mod publish;
pub mod selector;
pub mod upload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use url::Url;

use crate::config::{ConfigError, FileConfig, ScrapeFile, SelectorsFile};
use parse::{Profile, SelectorTexts};
use process::Processing;
use publish::Broker;
use upload::FtpTarget;

/// The default first page: the public scraping sandbox.
pub const DEFAULT_URL: &str = "https://books.toscrape.com/catalogue/page-1.html";
const DEFAULT_PAGES: u32 = 5;
const DEFAULT_DELAY_MS: u64 = 500;
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_CURRENCY: &str = "GBP";
const DEFAULT_TO_CURRENCY: &str = "EUR";
const DEFAULT_RATE: f64 = 1.17;
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672";
pub const DEFAULT_QUEUE: &str = "scraped_products";
const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_FTP_HOST: &str = "127.0.0.1";
const DEFAULT_FTP_PORT: u16 = 21;
pub const DEFAULT_FTP_PATH: &str = "processed_products.json";

/// Options of `labctl scrape`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_help = "Every option can also be set in the [scrape] section of the config file (see \
config/scrape.toml; config/scrape-laptops.toml is a profile for another shop). The FTP password comes from \
[scrape] ftp_password or LABCTL_FTP_PASSWORD, never from the command line.\n\n\
Examples:\n  labctl scrape --pages 2 --out products.json\n  \
labctl scrape --pages 50 --min-price 20 --max-price 40 --to-currency USD --rate 1.27\n  \
LABCTL_FTP_USER=testuser LABCTL_FTP_PASSWORD=testpass labctl scrape --publish --upload-ftp")]
pub struct Args {
    /// First listing page [default: https://books.toscrape.com/catalogue/page-1.html]
    #[arg(long, env = "LABCTL_SCRAPE_URL")]
    pub url: Option<String>,
    /// Most listing pages to read, following the "next" link [default: 5]
    #[arg(long, env = "LABCTL_SCRAPE_PAGES")]
    pub pages: Option<u32>,
    /// Pause between two requests to the shop, in ms [default: 500]
    #[arg(long, env = "LABCTL_SCRAPE_DELAY_MS")]
    pub delay_ms: Option<u64>,
    /// Give up on one request after this long, in ms [default: 10000]
    #[arg(long, env = "LABCTL_SCRAPE_TIMEOUT_MS")]
    pub timeout_ms: Option<u64>,
    /// Extra attempts at a page that failed with a connection error, 429 or 5xx [default: 3]
    #[arg(long, env = "LABCTL_SCRAPE_RETRIES")]
    pub retries: Option<u32>,
    /// User-Agent header of every request [default: labctl/VERSION (scraper)]
    #[arg(long, env = "LABCTL_SCRAPE_USER_AGENT")]
    pub user_agent: Option<String>,
    /// Currency of the shop's prices, ISO 4217; prices in another are bad items [default: GBP]
    #[arg(long, env = "LABCTL_SCRAPE_CURRENCY")]
    pub currency: Option<String>,
    /// Second currency every price is converted to [default: EUR]
    #[arg(long, env = "LABCTL_SCRAPE_TO_CURRENCY")]
    pub to_currency: Option<String>,
    /// Units of the second currency per unit of the shop's; a fixed rate you choose [default: 1.17]
    #[arg(long, env = "LABCTL_SCRAPE_RATE")]
    pub rate: Option<f64>,
    /// Keep only items priced at least this much, in the shop's currency
    #[arg(long, env = "LABCTL_SCRAPE_MIN_PRICE")]
    pub min_price: Option<f64>,
    /// Keep only items priced at most this much, in the shop's currency
    #[arg(long, env = "LABCTL_SCRAPE_MAX_PRICE")]
    pub max_price: Option<f64>,
    /// Write the processed file (JSON) here instead of to stdout
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Publish each item to the RabbitMQ queue, waiting for the broker's confirms
    #[arg(long)]
    pub publish: bool,
    /// RabbitMQ URL for --publish [default: amqp://guest:guest@127.0.0.1:5672]
    #[arg(long, env = "LABCTL_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Durable queue the items go to [default: scraped_products]
    #[arg(long, env = "LABCTL_QUEUE")]
    pub queue: Option<String>,
    /// How long to wait for the broker to confirm every item, in ms [default: 10000]
    #[arg(long, env = "LABCTL_CONFIRM_TIMEOUT_MS")]
    pub confirm_timeout_ms: Option<u64>,
    /// Upload the processed file to the FTP server (passive mode; a temporary name, then renamed)
    #[arg(long)]
    pub upload_ftp: bool,
    /// FTP server host [default: 127.0.0.1]
    #[arg(long, env = "LABCTL_FTP_HOST")]
    pub ftp_host: Option<String>,
    /// FTP server port [default: 21]
    #[arg(long, env = "LABCTL_FTP_PORT")]
    pub ftp_port: Option<u16>,
    /// FTP user (the password: [scrape] ftp_password or LABCTL_FTP_PASSWORD)
    #[arg(long, env = "LABCTL_FTP_USER")]
    pub ftp_user: Option<String>,
    /// Remote path of the processed file, relative to the FTP user's home [default: processed_products.json]
    #[arg(long, env = "LABCTL_FTP_PATH")]
    pub ftp_path: Option<String>,
    /// Explicit FTPS (AUTH TLS) for --upload-ftp, the server verified against --tls-ca [default: false]
    #[arg(long, env = "LABCTL_FTP_TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ftp_tls: Option<bool>,
    /// PEM file of the CA certificates the FTPS server must chain to [default: Mozilla's roots built into labctl (webpki-roots)]
    #[arg(long, env = "LABCTL_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub selectors: SelectorArgs,
}

/// The CSS selectors of the shop profile (`[scrape.selectors]`). Each may end in
/// `::attr(NAME)` to read an attribute instead of the text.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SelectorArgs {
    /// Selector of one item on a listing page [default: article.product_pod]
    #[arg(long, env = "LABCTL_SCRAPE_ITEM_SELECTOR")]
    pub item_selector: Option<String>,
    /// Selector of an item's title, inside the item [default: h3 a::attr(title)]
    #[arg(long, env = "LABCTL_SCRAPE_TITLE_SELECTOR")]
    pub title_selector: Option<String>,
    /// Selector of an item's price, e.g. "£51.77" [default: .product_price .price_color]
    #[arg(long, env = "LABCTL_SCRAPE_PRICE_SELECTOR")]
    pub price_selector: Option<String>,
    /// Selector of an item's availability; "" leaves it out [default: .product_price .availability]
    #[arg(long, env = "LABCTL_SCRAPE_AVAILABILITY_SELECTOR")]
    pub availability_selector: Option<String>,
    /// Selector of an item's rating ("Three", "4", "3/5"); "" leaves it out [default: p.star-rating::attr(class)]
    #[arg(long, env = "LABCTL_SCRAPE_RATING_SELECTOR")]
    pub rating_selector: Option<String>,
    /// Selector of an item's link, made absolute; "" leaves it out [default: h3 a::attr(href)]
    #[arg(long, env = "LABCTL_SCRAPE_LINK_SELECTOR")]
    pub link_selector: Option<String>,
    /// Selector of the next page's link; "" reads one page only [default: li.next a::attr(href)]
    #[arg(long, env = "LABCTL_SCRAPE_NEXT_SELECTOR")]
    pub next_selector: Option<String>,
}

/// Every option of a run, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: Url,
    pub pages: u32,
    pub polite: crawl::Politeness,
    pub profile: Profile,
    pub processing: Processing,
    pub out: Option<PathBuf>,
    /// Set with `--publish`.
    pub broker: Option<Broker>,
    /// Set with `--upload-ftp`.
    pub ftp: Option<FtpTarget>,
}

impl Settings {
    /// Merges flags/environment over the file over the defaults, and checks the result.
    /// `ftp_password_env` is `LABCTL_FTP_PASSWORD`.
    pub fn resolve(args: &Args, file: &ScrapeFile, ftp_password_env: Option<String>) -> Result<Settings, ConfigError> {
        let invalid = |msg: String| ConfigError::Invalid(msg);
        let url_text = pick(&args.url, &file.url).unwrap_or_else(|| DEFAULT_URL.to_string());
        let url = Url::parse(&url_text).map_err(|e| invalid(format!("url {url_text:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("url {url_text:?} must be http or https")));
        }
        let pages = args.pages.or(file.pages).unwrap_or(DEFAULT_PAGES);
        if pages == 0 {
            return Err(invalid("pages must be at least 1".into()));
        }
        let delay_ms = args.delay_ms.or(file.delay_ms).unwrap_or(DEFAULT_DELAY_MS);
        let timeout_ms = args.timeout_ms.or(file.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(invalid("timeout_ms must be positive".into()));
        }
        let polite = crawl::Politeness {
            delay: Duration::from_millis(delay_ms),
            timeout: Duration::from_millis(timeout_ms),
            retries: args.retries.or(file.retries).unwrap_or(DEFAULT_RETRIES),
            user_agent: pick(&args.user_agent, &file.user_agent).unwrap_or_else(default_user_agent),
        };

        let currency = currency_code("currency", pick(&args.currency, &file.currency), DEFAULT_CURRENCY)?;
        let to_currency =
            currency_code("to_currency", pick(&args.to_currency, &file.to_currency), DEFAULT_TO_CURRENCY)?;
        let rate = args.rate.or(file.rate).unwrap_or(DEFAULT_RATE);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid(format!("rate must be a positive number, not {rate}")));
        }
        let min_price = args.min_price.or(file.min_price);
        let max_price = args.max_price.or(file.max_price);
        for (name, value) in [("min_price", min_price), ("max_price", max_price)] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(invalid(format!("{name} must be a number ≥ 0")));
            }
        }
        if let (Some(min), Some(max)) = (min_price, max_price) {
            if min > max {
                return Err(invalid(format!("min_price ({min}) is above max_price ({max})")));
            }
        }
        let profile = Profile::new(&selector_texts(&args.selectors, &file.selectors), &currency)
            .map_err(|e| invalid(e.to_string()))?;

        let broker = if args.publish {
            let queue = pick(&args.queue, &file.queue).unwrap_or_else(|| DEFAULT_QUEUE.to_string());
            if queue.is_empty() || queue.len() > 255 {
                return Err(invalid(format!("queue name {queue:?} must have 1 to 255 bytes")));
            }
            Some(Broker {
                url: pick(&args.amqp_url, &file.amqp_url).unwrap_or_else(|| DEFAULT_AMQP_URL.to_string()),
                queue,
                confirm_timeout: Duration::from_millis(
                    args.confirm_timeout_ms.or(file.confirm_timeout_ms).unwrap_or(DEFAULT_CONFIRM_TIMEOUT_MS),
                ),
            })
        } else {
            None
        };
        let ftp = if args.upload_ftp {
            let user = pick(&args.ftp_user, &file.ftp_user).ok_or_else(|| {
                invalid("--upload-ftp needs an FTP user: --ftp-user, LABCTL_FTP_USER or [scrape] ftp_user".into())
            })?;
            let password = ftp_password_env.or_else(|| file.ftp_password.clone()).ok_or_else(|| {
                invalid(
                    "--upload-ftp needs the FTP password: LABCTL_FTP_PASSWORD, LABCTL_FTP_PASSWORD_FILE or [scrape] \
                     ftp_password"
                        .into(),
                )
            })?;
            let path = pick(&args.ftp_path, &file.ftp_path).unwrap_or_else(|| DEFAULT_FTP_PATH.to_string());
            if path.is_empty() || path.ends_with('/') {
                return Err(invalid(format!("ftp_path {path:?} must name a file")));
            }
            Some(FtpTarget {
                host: pick(&args.ftp_host, &file.ftp_host).unwrap_or_else(|| DEFAULT_FTP_HOST.to_string()),
                port: args.ftp_port.or(file.ftp_port).unwrap_or(DEFAULT_FTP_PORT),
                user,
                password,
                path,
                timeout: polite.timeout,
                tls: None,
            })
        } else {
            None
        };
        Ok(Settings {
            url,
            pages,
            polite,
            profile,
            processing: Processing { currency, to_currency, rate, min_price, max_price },
            out: args.out.clone(),
            broker,
            ftp,
        })
    }
}

/// The flag (or its environment variable), else the file's value.
fn pick(flag: &Option<String>, file: &Option<String>) -> Option<String> {
    flag.clone().or_else(|| file.clone())
}

fn default_user_agent() -> String {
    format!("labctl/{} (scraper)", env!("CARGO_PKG_VERSION"))
}

fn currency_code(name: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let code = value.unwrap_or_else(|| default.to_string()).trim().to_ascii_uppercase();
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(ConfigError::Invalid(format!("{name} must be a three-letter ISO 4217 code, not {code:?}")));
    }
    Ok(code)
}

fn selector_texts(args: &SelectorArgs, file: &SelectorsFile) -> SelectorTexts {
    let d = SelectorTexts::books_toscrape();
    SelectorTexts {
        item: pick(&args.item_selector, &file.item).unwrap_or(d.item),
        title: pick(&args.title_selector, &file.title).unwrap_or(d.title),
        price: pick(&args.price_selector, &file.price).unwrap_or(d.price),
        availability: pick(&args.availability_selector, &file.availability).unwrap_or(d.availability),
        rating: pick(&args.rating_selector, &file.rating).unwrap_or(d.rating),
        link: pick(&args.link_selector, &file.link).unwrap_or(d.link),
        next: pick(&args.next_selector, &file.next).unwrap_or(d.next),
    }
}

/// Runs `labctl scrape`.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    let password = crate::config::secret_env("LABCTL_FTP_PASSWORD")?;
    let mut settings = Settings::resolve(&args, &file.scrape, password)?;
    if let Some(target) = settings.ftp.as_mut().filter(|_| args.ftp_tls.or(file.scrape.ftp_tls) == Some(true)) {
        // Read now, so that a bad CA file stops the scraper before it scrapes.
        let tls = crate::tls::TlsSettings { identity: None, ca: args.tls_ca.clone().or_else(|| file.tls.ca.clone()) };
        target.tls = Some(tls.ftp_client()?);
    }
    let started = chrono::Utc::now();
    log::info!(
        "scraping up to {} pages from {} ({} ms between requests)",
        settings.pages,
        settings.url,
        settings.polite.delay.as_millis()
    );
    let progress = progress::Progress::new(settings.pages);
    let found = crawl::crawl(&settings.url, settings.pages, &settings.profile, &settings.polite, &progress);
    progress.finish();
    let found = found?;
    let processed = process::process(&found.items, settings.url.as_str(), started, &settings.processing);
    log::info!(
        "{} pages: {} valid items, {} bad, {} outside the price range; {} items, total {} {} = {} {}",
        found.pages,
        found.items.len(),
        found.bad,
        found.items.len() - processed.count,
        processed.count,
        processed.total,
        processed.currency,
        processed.total_converted,
        processed.converted_currency
    );

    let mut json = serde_json::to_vec_pretty(&processed).context("encoding the processed file")?;
    json.push(b'\n');
    match &settings.out {
        Some(path) => {
            write_atomically(path, &json).with_context(|| format!("writing {}", path.display()))?;
            log::info!("wrote {} ({} bytes)", path.display(), json.len());
        }
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&json).and_then(|_| stdout.flush()).context("writing to stdout")?;
        }
    }
    if let Some(broker) = &settings.broker {
        let published = publish::publish(&processed, broker)?;
        log::info!(
            "published {published} items to queue {:?} at {}, all confirmed",
            broker.queue,
            publish::redact(&broker.url)
        );
    }
    if let Some(target) = &settings.ftp {
        let sent = upload::upload(&json, target)?;
        log::info!("uploaded {} ({sent} bytes) to {}@{}:{}", target.path, target.user, target.host, target.port);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &Args, file: &str) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::from_str(file).unwrap();
        Settings::resolve(args, &file.scrape, None)
    }

    #[test]
    fn defaults_target_books_toscrape_politely() {
        let s = resolve(&Args::default(), "").unwrap();
        assert_eq!(s.url.as_str(), DEFAULT_URL);
        assert_eq!(s.pages, 5);
        assert_eq!(s.polite.delay, Duration::from_millis(500));
        assert!(s.polite.user_agent.starts_with("labctl/"), "{}", s.polite.user_agent);
        assert_eq!(s.profile, Profile::new(&SelectorTexts::books_toscrape(), "GBP").unwrap());
        assert_eq!((s.processing.currency.as_str(), s.processing.to_currency.as_str()), ("GBP", "EUR"));
        assert!(s.broker.is_none() && s.ftp.is_none());
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file = "[scrape]\npages = 7\nrate = 2.0\nqueue = \"from_file\"\n[scrape.selectors]\nitem = \"li.item\"\n";
        let args = Args { pages: Some(2), publish: true, to_currency: Some("usd".into()), ..Args::default() };
        let s = resolve(&args, file).unwrap();
        assert_eq!(s.pages, 2);
        assert_eq!(s.processing.rate, 2.0);
        assert_eq!(s.processing.to_currency, "USD");
        assert_eq!(s.profile.item.source(), "li.item");
        let broker = s.broker.unwrap();
        assert_eq!((broker.queue.as_str(), broker.url.as_str()), ("from_file", DEFAULT_AMQP_URL));
    }

    #[test]
    fn the_ftp_password_comes_from_the_environment_or_the_file() {
        let args = Args { upload_ftp: true, ftp_user: Some("u".into()), ..Args::default() };
        let file: FileConfig = toml::from_str("[scrape]\nftp_password = \"in-file\"\nftp_port = 2121\n").unwrap();
        let from_env = Settings::resolve(&args, &file.scrape, Some("in-env".into())).unwrap().ftp.unwrap();
        assert_eq!((from_env.password.as_str(), from_env.port), ("in-env", 2121));
        assert!(!format!("{from_env:?}").contains("in-env"), "Debug must not show the password");
        let from_file = Settings::resolve(&args, &file.scrape, None).unwrap().ftp.unwrap();
        assert_eq!(from_file.password, "in-file");
        let err = Settings::resolve(&args, &ScrapeFile::default(), None).unwrap_err();
        assert!(err.to_string().contains("LABCTL_FTP_PASSWORD"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        let cases: [(Args, &str); 7] = [
            (Args { url: Some("ftp://x".into()), ..Args::default() }, "http or https"),
            (Args { pages: Some(0), ..Args::default() }, "pages"),
            (Args { rate: Some(-1.0), ..Args::default() }, "rate"),
            (Args { currency: Some("pound".into()), ..Args::default() }, "ISO 4217"),
            (Args { min_price: Some(10.0), max_price: Some(5.0), ..Args::default() }, "above max_price"),
            (
                Args {
                    selectors: SelectorArgs { price_selector: Some("p:first".into()), ..SelectorArgs::default() },
                    ..Args::default()
                },
                "invalid selector",
            ),
            (Args { upload_ftp: true, ..Args::default() }, "FTP user"),
        ];
        for (args, expected) in cases {
            let err = resolve(&args, "").unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn the_example_config_files_load_and_scrape_toml_shows_the_defaults() {
        let load = |name: &str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
            let file = FileConfig::load(Some(&path)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            Settings::resolve(&Args::default(), &file.scrape, None).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let example = load("scrape.toml");
        let defaults = resolve(&Args::default(), "").unwrap();
        assert_eq!(example.url, defaults.url);
        assert_eq!(example.pages, defaults.pages);
        assert_eq!(format!("{:?}", example.polite), format!("{:?}", defaults.polite));
        assert_eq!(example.profile, defaults.profile);
        assert_eq!(example.processing, defaults.processing);
        assert_eq!(load("scrape-laptops.toml").processing.currency, "USD");
    }
}
