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
    // 1,000 sites' own descriptors would be more than the limit: none kept.
    assert_eq!(kept.len(), 0);
    // 60 sites: (256 - 64 - 60) / 2 = 66 cgroups' files fit, all 60 kept.
    let few = kept.read(&tree, &paths[..60], true);
    assert_eq!(kept.len(), 60);
    // Back to 1,000: the room is gone and so are the files.
    let again = kept.read(&tree, &paths, true);
    assert_eq!(kept.len(), 0);
    for got in [plain, first, few, again] {
        for (i, r) in got.iter().enumerate() {
            assert_eq!(*r.as_ref().unwrap(), (i as u64 * 4096, 1), "{}", paths[i]);
        }
    }
}
