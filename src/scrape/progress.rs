//! Progress of a scrape: a bar on a terminal, plain log lines otherwise (pipes, files, CI).

use std::cell::Cell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use url::Url;

/// Log lines name the command, not this module.
const TARGET: &str = "labctl::scrape";

/// Reports pages as they are read, and warnings, without garbling the bar.
pub struct Progress {
    bar: Option<ProgressBar>,
    items: Cell<usize>,
}

impl Progress {
    /// A bar of `pages` steps when stderr is a terminal, else log lines.
    pub fn new(pages: u32) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(pages as u64);
            let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} pages, {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message("0 items");
            bar
        });
        Progress { bar, items: Cell::new(0) }
    }

    /// Listing page `page` was read: `valid` items kept, `bad` left out.
    pub fn page_done(&self, page: u32, url: &Url, valid: usize, bad: usize) {
        self.items.set(self.items.get() + valid);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("{} items", self.items.get()));
            }
            None => log::info!(target: TARGET, "page {page}: {valid} items, {bad} bad ({url})"),
        }
    }

    /// A warning, printed above the bar.
    pub fn warn(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| log::warn!(target: TARGET, "{message}")),
            None => log::warn!(target: TARGET, "{message}"),
        }
    }

    /// Removes the bar; later output goes to a clean line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
