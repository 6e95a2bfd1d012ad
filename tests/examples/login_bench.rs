//! What `pam_imperium.so` adds to an SSH login: the same private sshd, once
//! with the module in its account and session stacks (the tenant lands in its
//! container) and once without (the tenant lands on the host), logged into
//! alternately with `ssh site52@127.0.0.1 true`, in the same run.
//!
//! Run as root after `cargo build --release --workspace --examples`:
//! `target/release/examples/login_bench [LOGINS]`.

use std::time::Instant;

use e2e::sshd::{Keys, Sshd};
use e2e::Emperor;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn quartiles(v: &[f64]) -> String {
    format!(
        "(p10 {:.1}, p90 {:.1})",
        v[v.len() / 10],
        v[v.len() * 9 / 10]
    )
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);
    let (with, without) = (Keys::new(), Keys::new());
    let mut e = Emperor::new();
    e.write(
        "site52",
        &format!(
            "kind = \"site\"\n[container]\nssh_keys = [\"{}\", \"{}\"]\n",
            with.public(),
            without.public()
        ),
    );
    e.start();
    e.running_pid("site52");
    let a = Sshd::start(with, &e, true);
    let b = Sshd::start(without, &e, false);
    let login = |s: &Sshd| {
        let t = Instant::now();
        let out = s.ssh("site52", &[], "true");
        assert!(out.status.success(), "{out:?}\n{}", s.log());
        t.elapsed().as_secs_f64() * 1e3
    };
    // One of each first, to warm caches.
    login(&a);
    login(&b);
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..n {
        ta.push(login(&a));
        tb.push(login(&b));
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    println!("{n} logins each, ssh site52@127.0.0.1 true (client to exit):");
    println!(
        "  with pam_imperium (into the container): median {ma:.1} ms {}",
        quartiles(&ta)
    );
    println!(
        "  without (on the host):                   median {mb:.1} ms {}",
        quartiles(&tb)
    );
    println!(
        "  overhead of the module:                  {:+.1} ms",
        ma - mb
    );
    // The PAM stack alone (no sshd, no client): pamtester in a loop.
    let runs = n * 5;
    let pa = a.pamtester("site52", runs).as_secs_f64() * 1e3;
    let pb = b.pamtester("site52", runs).as_secs_f64() * 1e3;
    println!("pamtester acct_mgmt open_session close_session, {runs} runs each:");
    println!("  with pam_imperium:    {pa:.2} ms a run");
    println!("  without:              {pb:.2} ms a run");
    println!("  the module's hooks:   {:+.2} ms", pa - pb);
}
