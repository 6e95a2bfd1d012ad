//! `router`: the shared HTTP/HTTPS (SNI) router. Not built yet; this binary only
//! says so, so that nothing mistakes it for a working router.

fn main() {
    eprintln!("router: not built yet");
    std::process::exit(2);
}
