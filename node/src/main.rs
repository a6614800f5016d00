use clap::Parser;

fn main() -> std::process::ExitCode {
    private_files();
    let cli = ferry::cli::Cli::parse();
    ferry::cli::init_logging(&cli);
    match ferry::commands::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if closed_stdout(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every file and directory ferry makes is for its own user only (0600 and
/// 0700): WAL segments, peer state, keys. The data directory code asks for
/// these modes itself; the mask covers what libraries create.
fn private_files() {
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// `ferry status | head -1`: the reader went away. Rust ignores SIGPIPE, so
/// writes fail with EPIPE instead; that is the end of the output, not an
/// error to report.
fn closed_stdout(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(|io| io.kind()) == pipe
            || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind()) == pipe
    })
}
