//! A tiny HTTP server standing in for a shop: serves saved pages on a free 127.0.0.1 port.
//!
//! [`Site::books`] serves the copy of books.toscrape.com in `tests/fixtures/books` (listing
//! pages `/catalogue/page-1.html` … `page-3.html`). Every request is recorded with its
//! User-Agent and arrival time; a path can be made to fail a number of times first. The
//! server stops when the [`Site`] is dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The titles of the nine valid books of the three saved listing pages (tests/fixtures/books).
pub const BOOKS: [&str; 9] = [
    "A Light in the Attic",
    "Tipping the Velvet",
    "Soumission",
    "Sharp Objects",
    "Set Me Free",
    "Rip it Up and Start Again",
    "Mesaerion: The Best Science Fiction Stories 1800-1849",
    "Libertarianism for Beginners",
    "It's Only the Himalayas",
];

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub user_agent: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    files: Option<PathBuf>,
    pages: HashMap<String, String>,
    /// Path → (status, how many more times to answer it instead of the page).
    failures: HashMap<String, (u16, u32)>,
    requests: Vec<Request>,
}

/// A running site.
pub struct Site {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Site {
    /// Serves files under `dir` (by URL path) and nothing else yet.
    pub fn serve_dir(dir: &Path) -> Site {
        Site::start(State { files: Some(dir.to_path_buf()), ..State::default() })
    }

    /// Serves the saved books.toscrape.com listing pages.
    pub fn books() -> Site {
        Site::serve_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/books"))
    }

    /// Serves nothing but the pages added with [`Site::page`].
    pub fn empty() -> Site {
        Site::start(State::default())
    }

    fn start(state: State) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site's port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = answer(stream, &state);
                    }
                }
            })
        };
        Site { port, state, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Serves `body` at `path` (before any file).
    pub fn page(&self, path: &str, body: &str) {
        self.state.lock().unwrap().pages.insert(path.to_string(), body.to_string());
    }

    /// Answers `path` with `status` (and no page) the next `times` requests.
    pub fn fail(&self, path: &str, status: u16, times: u32) {
        self.state.lock().unwrap().failures.insert(path.to_string(), (status, times));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The paths requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.path).collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request and answers it; connections are not kept alive.
fn answer(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut user_agent = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("user-agent") {
                user_agent = Some(value.trim().to_string());
            }
        }
    }
    let (status, body) = {
        let mut state = state.lock().unwrap();
        state.requests.push(Request { path: path.clone(), user_agent, at: Instant::now() });
        match state.failures.get_mut(&path) {
            Some((status, times)) if *times > 0 => {
                *times -= 1;
                (*status, format!("failing on purpose with {status}"))
            }
            _ => match state.pages.get(&path) {
                Some(body) => (200, body.clone()),
                None => match state.files.as_ref().and_then(|dir| read_under(dir, &path)) {
                    Some(body) => (200, body),
                    None => (404, "not found".to_string()),
                },
            },
        }
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The file at URL `path` under `dir`, refusing paths that climb out of it.
fn read_under(dir: &Path, path: &str) -> Option<String> {
    let relative = path.split('?').next()?.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return None;
    }
    std::fs::read_to_string(dir.join(relative)).ok()
}
