use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's allocator: a write allocates many small JSON values on its way
/// through every node, and glibc's malloc and free took a sixth of the cluster's CPU time.
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
