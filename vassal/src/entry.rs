//! How both programs of this package start: `vassal` and `vassal-notify`.

use std::path::PathBuf;

/// Runs `run` on the arguments and exits with the code it returns; an error
/// is one line on stderr (a write that fails, as to a full home, is ignored).
pub fn main(run: fn(&[String]) -> Result<i32, String>) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = run(&args).unwrap_or_else(|e| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "vassal: {e}");
        1
    });
    std::process::exit(code)
}

/// The tenant's home: `$HOME`, else `/`.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
