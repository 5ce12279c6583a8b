//! The `hostforge` binary: parses the command line and runs it; errors are printed with
//! their whole chain of causes.

fn main() {
    if let Err(e) = hostforge::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
