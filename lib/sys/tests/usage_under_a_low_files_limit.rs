//! Reading the usage of many cgroups never holds more descriptors than it
//! keeps: a process of its own (the open-files limit is the process's), its
//! limit lowered to 256, reads 1,000 cgroups of a FAKE v2 tree (plain files
//! in a temporary directory): opened all at once, their files would take
//! 2,000.

use sys::cgroup::{CgroupTree, KeptUsage, V2};

#[test]
fn a_thousand_cgroups_are_read_under_a_limit_of_256_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let names: Vec<String> = (0..1000).map(|i| format!("imperium/s{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("memory.current"), format!("{}\n", i * 4096)).unwrap();
        std::fs::write(d.join("pids.current"), "1\n").unwrap();
    }
    let tree = V2::new(dir.path().to_path_buf());
    let paths: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    let plain = tree.usage_all(&paths);
    let mut kept = KeptUsage::default();
    let first = kept.read(&tree, &paths, true);
    let again = kept.read(&tree, &paths, true);
    for got in [plain, first, again] {
        for (i, r) in got.iter().enumerate() {
            assert_eq!(*r.as_ref().unwrap(), (i as u64 * 4096, 1), "{}", paths[i]);
        }
    }
    // A quarter of the limit kept: 32 cgroups' two files.
    assert_eq!(kept.len(), 32);
}
