use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the C library's allocator: see docs/BENCHMARKS.md (allocation was
/// about a tenth of a node's CPU under write load with glibc's malloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = labctl::cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,actix_server=warn"))
        .format_timestamp_millis()
        .init();
    match labctl::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
