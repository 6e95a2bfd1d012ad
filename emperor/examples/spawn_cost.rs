//! Where a container start's time goes: spawns a site's init repeatedly with
//! parts of the plan removed, and prints the median clone-to-exec time of each
//! variant in microseconds. Root only; cleans up after itself.
//!
//! `cargo run --release -p emperor --example spawn_cost -- [RUNS]`

// A benchmark: it measures real time.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Instant;

use emperor::spawner::plan;
use emperor::spec::{self, Input};
use model::{Layout, Name, VassalFile};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout {
        vassals: dir.path().join("v"),
        home_root: dir.path().join("home"),
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        cgroup_root: format!("imperium-cost-{}", std::process::id()),
    };
    let vassal = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("vassal");
    let name: Name = "cost".parse().unwrap();
    let file = VassalFile::parse(
        &name,
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\npids = 64\n",
    )
    .unwrap();
    let tree: Arc<dyn sys::CgroupTree> = Arc::from(sys::cgroup::detect().unwrap());
    let inp = Input {
        name: &name,
        file: &file,
        uid: 39999,
        layout: &layout,
        vassal_exe: &vassal,
        cgroup_v2: tree.version() == sys::cgroup::Version::V2,
        net: None,
        quota: None,
        lxcfs: None,
    };
    let spawner =
        emperor::spawner::Spawner::new(tree.clone(), sys::seccomp::default_program().unwrap());
    spawner.prepare_host(&inp).unwrap();
    std::fs::create_dir_all(&layout.state_dir).unwrap();
    emperor::keys::SiteKeys::open(&layout)
        .unwrap()
        .write(&name, 39999)
        .unwrap();
    let s = spec::build(&inp).unwrap();
    let root = layout.root_dir(&name);
    std::fs::create_dir_all(&root).unwrap();
    let cg = inp.cgroup();
    tree.create(&cg).unwrap();
    let skel = spec::skeleton(&inp, &s);
    let full = plan(&s, &skel, 39999, &sys::seccomp::default_program().unwrap()).unwrap();
    println!("filesystem operations {}", full.fs.len());
    let t = Instant::now();
    for _ in 0..200 {
        let s = spec::build(&inp).unwrap();
        std::hint::black_box(&s);
    }
    let t_spec = t.elapsed() / 200;
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(spec::skeleton(&inp, &s));
    }
    let t_skel = t.elapsed() / 200;
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(plan(&s, &skel, 39999, &[]).unwrap());
    }
    println!(
        "spec {t_spec:?} skeleton {t_skel:?} plan {:?} (each, in process)",
        t.elapsed() / 200
    );
    type Trim = Box<dyn Fn(&mut sys::ChildPlan)>;
    let variants: Vec<(&str, Trim)> = vec![
        ("full", Box::new(|_| {})),
        (
            "no /etc binds",
            Box::new(|p| {
                p.fs.retain(|o| !matches!(o, sys::FsOp::Mount(m) if m.target.to_str().unwrap().contains("/etc/")))
            }),
        ),
        (
            "no /proc masks",
            Box::new(|p| {
                p.fs.retain(|o| !matches!(o, sys::FsOp::Mount(m) if m.target.to_str().unwrap().contains("/proc/")))
            }),
        ),
        ("no seccomp", Box::new(|p| p.seccomp = None)),
        (
            "no netns",
            Box::new(|p| {
                p.namespaces &= !libc::CLONE_NEWNET;
                p.loopback_up = false;
            }),
        ),
    ];
    let pool = sys::netns::NetnsPool::start(2).unwrap();
    for (label, f) in variants.into_iter().chain([(
        "pooled netns",
        Box::new(|_: &mut sys::ChildPlan| {}) as Trim,
    )]) {
        let pooled = label == "pooled netns";
        let mut times = Vec::new();
        for _ in 0..runs {
            let mut p = plan(&s, &skel, 39999, &[]).unwrap();
            p.seccomp = full.seccomp.clone();
            f(&mut p);
            if pooled {
                while p.netns.is_none() {
                    p.netns = pool.take();
                    std::thread::sleep(std::time::Duration::from_millis(30));
                }
                p.namespaces &= !libc::CLONE_NEWNET;
                p.loopback_up = false;
            }
            let join = tree.join(&cg).unwrap();
            let t = Instant::now();
            let pidfd = sys::launch::spawn(&p, &join).expect("spawn");
            times.push(t.elapsed().as_micros());
            pidfd.signal(libc::SIGKILL).unwrap();
            while pidfd.try_reap().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        times.sort_unstable();
        println!(
            "{label:<16} median {:>6} us  min {:>6} us",
            times[times.len() / 2],
            times[0]
        );
    }
    tree.remove(&layout.cgroup_root).unwrap();
}
