//! What judging every vassal file costs: builds the catalog of N sites (each
//! with a domain, in the admin directory, all running before) repeatedly and
//! prints the median time of one build.
//!
//! `cargo run --release -p model --example catalog_cost -- [SITES] [RUNS]`

// A benchmark: it measures real time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use model::catalog::{Catalog, Entry, Source};
use model::{Name, VassalFile};

fn main() {
    let mut args = std::env::args().skip(1);
    let sites: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let mut entries = Vec::new();
    let mut previous = BTreeMap::new();
    for i in 0..sites {
        let name: Name = format!("s{i}").parse().unwrap();
        let text = format!(
            "kind = \"site\"\ndomains = [\"s{i}.example.org\"]\n[limits]\nmemory = \"32M\"\npids = 32\n"
        );
        let parsed = VassalFile::parse(&name, &text);
        previous.insert(name.clone(), parsed.clone().unwrap());
        entries.push(Entry {
            path: PathBuf::from(format!("/etc/imperium/vassals/s{i}.toml")),
            name,
            source: Source::Admin,
            parsed,
        });
    }
    let host = |u: &str| u == "root";
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let cat = Catalog::build(&entries, &previous, &host);
        times.push(t.elapsed());
        assert_eq!(cat.verdicts.len(), sites);
    }
    times.sort();
    println!(
        "{sites} sites: Catalog::build median {:?}, min {:?}",
        times[runs / 2],
        times[0]
    );
}
