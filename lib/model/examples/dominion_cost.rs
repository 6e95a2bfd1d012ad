//! What telling the router of one more site costs: the dominion of N sites
//! serialized whole (as the emperor did) against its text kept per site
//! (one entry serialized, the others' bytes copied). Prints the medians.
//!
//! `cargo run --release -p model --example dominion_cost -- [SITES] [RUNS]`

// A benchmark: it measures real time.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use model::subscription::{Dominion, DominionText, SiteRoutes};

fn routes(i: usize) -> SiteRoutes {
    SiteRoutes {
        public_key: format!("{i:0>43}="),
        domains: vec![format!("s{i}.example.org")],
        sockets: format!("/run/imperium/sockets/s{i}"),
        uid: Some(30000 + i as u32),
        suspended: false,
        moving: Vec::new(),
        requests: None,
        address: None,
    }
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sites: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let mut d = Dominion {
        schema_version: 1,
        sites: Default::default(),
    };
    let mut text = DominionText::default();
    for i in 0..sites {
        d.sites.insert(format!("s{i}"), routes(i));
        text.set(&format!("s{i}"), &routes(i));
    }
    let (mut whole, mut kept) = (Vec::new(), Vec::new());
    for r in 0..runs {
        let name = format!("more{r}");
        let t = Instant::now();
        d.sites.insert(name.clone(), routes(sites + r));
        let a = serde_json::to_vec_pretty(&d).unwrap();
        whole.push(t.elapsed());
        let t = Instant::now();
        text.set(&name, &routes(sites + r));
        let b = text.to_vec();
        kept.push(t.elapsed());
        assert!(a.len() > b.len());
    }
    println!(
        "{sites} sites, one more: serialized whole (pretty) {:?}, kept per site {:?}",
        median(whole),
        median(kept)
    );
}
