//! What `pam_imperium.so` adds to an SSH login: the same private sshd, once
//! with the module in its account and session stacks (the tenant lands in its
//! container) and twice without (the tenant lands on the host), logged into
//! in turn with `ssh site52@127.0.0.1 true`, in the same run. The second sshd
//! without the module is the control: its difference to the first is what
//! this machine's noise alone makes of two identical servers.
//!
//! Run as root after `cargo build --release --workspace --examples`:
//! `target/release/examples/login_bench [LOGINS]`.

use std::time::Instant;

use e2e::sshd::{Keys, Pam, Sshd};
use e2e::Emperor;

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Median, p10 and p90 of `v`.
fn summary(v: &[f64]) -> String {
    let s = sorted(v.to_vec());
    let f = |x: f64| format!("{x:.1}").replace("-0.0", "0.0");
    format!(
        "median {} ms (p10 {}, p90 {})",
        f(s[s.len() / 2]),
        f(s[s.len() / 10]),
        f(s[s.len() * 9 / 10])
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(40);
    // `--tty`: ask for a pty (`ssh -tt`), which also makes both ends set
    // TCP_NODELAY for the session.
    let flags: &[&str] = if args.iter().any(|a| a == "--tty") {
        &["-tt"]
    } else {
        &[]
    };
    let keys = [Keys::new(), Keys::new(), Keys::new()];
    let mut e = Emperor::new();
    let publics: Vec<String> = keys.iter().map(|k| format!("\"{}\"", k.public())).collect();
    e.write(
        "site52",
        &format!(
            "kind = \"site\"\n[container]\nssh_keys = [{}]\n",
            publics.join(", ")
        ),
    );
    e.start();
    e.running_pid("site52");
    let [ka, kb, kc] = keys;
    let servers = [
        Sshd::start(ka, &e, Pam::Imperium),
        Sshd::start(kb, &e, Pam::Plain),
        Sshd::start(kc, &e, Pam::Plain),
    ];
    let login = |s: &Sshd| {
        let t = Instant::now();
        let out = s.ssh("site52", flags, "true");
        assert!(out.status.success(), "{out:?}\n{}", s.log());
        t.elapsed().as_secs_f64() * 1e3
    };
    for s in &servers {
        login(s); // warm up
    }
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..n {
        // A different order each round, so no server always goes first.
        for k in 0..3 {
            let j = (i + k) % 3;
            times[j].push(login(&servers[j]));
        }
    }
    let diff = |a: usize, b: usize| -> Vec<f64> {
        times[a].iter().zip(&times[b]).map(|(x, y)| x - y).collect()
    };
    println!("{n} rounds, ssh site52@127.0.0.1 true (until the client exits):");
    for (i, what) in [
        "with pam_imperium (into the container)",
        "without (on the host)",
        "without, control",
    ]
    .iter()
    .enumerate()
    {
        println!("  {what:40} {}", summary(&times[i]));
    }
    println!(
        "  module - without, paired:                {}",
        summary(&diff(0, 1))
    );
    println!(
        "  control - without, paired (noise):       {}",
        summary(&diff(2, 1))
    );
    // The PAM stack alone (no sshd, no client): pamtester, runs 100 ms apart.
    let runs = n * 2;
    let pause = std::time::Duration::from_millis(100);
    let ms = |v: Vec<std::time::Duration>| -> Vec<f64> {
        v.iter().map(|d| d.as_secs_f64() * 1e3).collect()
    };
    let pa = ms(servers[0].pamtester("site52", runs, pause));
    let pb = ms(servers[1].pamtester("site52", runs, pause));
    let hooks: Vec<f64> = pa.iter().zip(&pb).map(|(a, b)| a - b).collect();
    println!("pamtester acct_mgmt open_session close_session, {runs} runs each, 100 ms apart:");
    println!("  with pam_imperium:    {}", summary(&pa));
    println!("  without:              {}", summary(&pb));
    println!("  the module's hooks:   {}", summary(&hooks));
}
