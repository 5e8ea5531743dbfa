//! How many CPUs pj may use, as loky's `cpu_count()` computes it: the smallest of the online CPUs,
//! the process's affinity mask, its cgroup CPU quota (rounded up) and a user cap from the
//! `PJ_MAX_CPU_COUNT` environment variable, and at least 1.
//!
//! `num_cpus::get()` (1.17) already gives the affinity count (for masks up to 1024 CPUs) and the
//! quota of the process's *own* cgroup (v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us` or v2 `cpu.max`,
//! located through `/proc/self/cgroup` and `/proc/self/mountinfo`). This module adds what it misses:
//! quotas set on *ancestor* cgroups (a limit on a parent slice caps every child, and containers often
//! put the quota one level up), both hierarchies on hybrid v1/v2 hosts, loky's fixed root paths
//! (`/sys/fs/cgroup/cpu.max`, `/sys/fs/cgroup/cpu/cpu.cfs_*`), affinity masks larger than 1024 CPUs,
//! the online CPU count as its own bound, and the environment cap. The hardware part is detected
//! once; the environment variable is read at every call, so a caller may change it at run time.

use std::path::{Component, Path, PathBuf};

use once_cell::sync::Lazy;

/// The environment variable that caps [`cpu_count`] (pj's `LOKY_MAX_CPU_COUNT`): a positive
/// integer; anything else is ignored.
pub const MAX_CPU_COUNT_ENV: &str = "PJ_MAX_CPU_COUNT";

/// The hardware and operating-system limits, which do not change while the process runs (as far as
/// anybody relies on: loky caches them too).
static HARDWARE: Lazy<usize> = Lazy::new(detect_hardware);

/// The number of CPUs pj may use, >= 1: negative `n_jobs` counts from it. It is the minimum of the
/// online CPU count, the affinity mask (`taskset`), the cgroup CPU quota of the process and its
/// ancestors (`ceil(quota / period)`, so a 1.5-CPU container gets 2 workers), and
/// `PJ_MAX_CPU_COUNT` when that is a positive integer.
pub fn cpu_count() -> usize {
    let env = std::env::var_os(MAX_CPU_COUNT_ENV);
    with_env_cap(*HARDWARE, env.as_deref().and_then(|v| v.to_str()))
}

/// Applies the environment cap (its raw value, if any) to a hardware count.
fn with_env_cap(hardware: usize, env: Option<&str>) -> usize {
    combine(&[Some(hardware), env.and_then(parse_env_cap)])
}

/// `PJ_MAX_CPU_COUNT`: a positive integer, surrounding whitespace allowed; otherwise no cap.
fn parse_env_cap(value: &str) -> Option<usize> {
    let n: i64 = value.trim().parse().ok()?;
    if n <= 0 {
        None
    } else {
        usize::try_from(n).ok()
    }
}

/// The smallest of the known limits (unknown ones and zeros are ignored), at least 1.
fn combine(limits: &[Option<usize>]) -> usize {
    limits
        .iter()
        .flatten()
        .copied()
        .filter(|&n| n >= 1)
        .min()
        .unwrap_or(1)
}

fn detect_hardware() -> usize {
    combine(&[
        Some(num_cpus::get()),
        os_count(),
        affinity_count(),
        cgroup_limit(),
    ])
}

/// Online CPUs (what Python's `os.cpu_count()` reports on Linux). On libc: rustix has no
/// `sysconf`.
#[cfg(unix)]
fn os_count() -> Option<usize> {
    // SAFETY: sysconf only reads a system value; it has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n >= 1)
}

#[cfg(not(unix))]
fn os_count() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// CPUs in the process's affinity mask, with a mask that grows until the kernel accepts it, so
/// machines with more than 1024 CPUs are counted too. On libc: rustix's `CpuSet` has a fixed
/// 1024 CPUs, and `available_parallelism` also applies cgroup quotas (counted apart here).
#[cfg(target_os = "linux")]
fn affinity_count() -> Option<usize> {
    const WORD_BYTES: usize = std::mem::size_of::<libc::c_ulong>();
    let mut words = 1024 / 8 / WORD_BYTES;
    // Up to 2^22 CPUs: far beyond any machine, and bounded.
    while words * WORD_BYTES * 8 <= 1 << 22 {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        // SAFETY: `mask` is a writable, c_ulong-aligned buffer of exactly `words * WORD_BYTES`
        // bytes, the size passed; a cpu_set_t is such an array of c_ulong words and the kernel writes
        // at most that many bytes. pid 0 is the calling thread.
        let rc = unsafe {
            libc::sched_getaffinity(
                0,
                words * WORD_BYTES,
                mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
            )
        };
        if rc == 0 {
            let count: u32 = mask.iter().map(|w| w.count_ones()).sum();
            return usize::try_from(count).ok().filter(|&n| n >= 1);
        }
        // EINVAL: the mask is smaller than the kernel's; try a bigger one.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return None;
        }
        words *= 2;
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn affinity_count() -> Option<usize> {
    None
}

// ---------------------------------------------------------------------------------------------
// cgroups

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CgroupVersion {
    V1,
    V2,
}

/// A cgroup filesystem mount: which hierarchy, which cgroup is its root, and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    version: CgroupVersion,
    root: String,
    mount_point: PathBuf,
}

/// `ceil(quota / period)` when both are positive; otherwise no limit.
fn quota_cpus(quota: i64, period: i64) -> Option<usize> {
    if quota <= 0 || period <= 0 {
        return None;
    }
    // Both positive, so the casts are lossless.
    usize::try_from((quota as u64).div_ceil(period as u64)).ok()
}

/// A cgroup v2 `cpu.max` file: `"max 100000"` (no limit) or `"150000 100000"` (1.5 CPUs -> 2).
fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut fields = text.split_ascii_whitespace();
    let (quota, period) = (fields.next()?, fields.next()?);
    if fields.next().is_some() || quota == "max" {
        return None;
    }
    quota_cpus(quota.parse().ok()?, period.parse().ok()?)
}

/// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` contents (quota -1: no limit).
fn parse_cfs(quota: &str, period: &str) -> Option<usize> {
    quota_cpus(quota.trim().parse().ok()?, period.trim().parse().ok()?)
}

/// The cgroups of the process that can hold a CPU quota, from `/proc/self/cgroup`: the v2 entry
/// (`0::/path`) and any v1 hierarchy with the `cpu` controller (`4:cpu,cpuacct:/path`).
fn parse_proc_cgroup(text: &str) -> Vec<(CgroupVersion, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let version = if id == "0" && controllers.is_empty() {
                CgroupVersion::V2
            } else if controllers.split(',').any(|c| c == "cpu") {
                CgroupVersion::V1
            } else {
                return None;
            };
            Some((version, path.to_owned()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            if let Some(octal) = bytes.get(i + 1..i + 4) {
                if octal.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = octal
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts that can hold a CPU quota, from `/proc/self/mountinfo`: every `cgroup2` mount
/// and every `cgroup` (v1) mount with the `cpu` controller.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount_point options [optional...] - fstype source superoptions
            let fields: Vec<&str> = line.split(' ').collect();
            let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
            let separator = fields.iter().skip(6).position(|&f| f == "-")? + 6;
            let fstype = *fields.get(separator + 1)?;
            let version = match fstype {
                "cgroup2" => CgroupVersion::V2,
                "cgroup" => {
                    let options = fields.get(separator + 3)?;
                    if !options.split(',').any(|o| o == "cpu") {
                        return None;
                    }
                    CgroupVersion::V1
                }
                _ => return None,
            };
            Some(Mount {
                version,
                root: unescape_mountinfo(root),
                mount_point: unescape_mountinfo(mount_point).into(),
            })
        })
        .collect()
}

/// Every directory whose quota applies to the process: for each of its cgroups, the cgroup's own
/// directory under each matching mount and every ancestor up to the mount point.
fn cgroup_dirs(
    cgroups: &[(CgroupVersion, String)],
    mounts: &[Mount],
) -> Vec<(CgroupVersion, PathBuf)> {
    let mut dirs = Vec::new();
    for (version, path) in cgroups {
        for mount in mounts.iter().filter(|m| m.version == *version) {
            // The part of the cgroup path below the mount's root; a cgroup outside the mounted
            // subtree (or a path with `..`) leaves only the mount point itself.
            let relative = Path::new(path)
                .strip_prefix(&mount.root)
                .ok()
                .filter(|rel| rel.components().all(|c| matches!(c, Component::Normal(_))))
                .unwrap_or(Path::new(""));
            for ancestor in relative.ancestors() {
                dirs.push((*version, mount.mount_point.join(ancestor)));
            }
        }
    }
    dirs
}

/// The CPU limit stored in one cgroup directory, if any.
fn read_limit(version: CgroupVersion, dir: &Path) -> Option<usize> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    match version {
        CgroupVersion::V2 => parse_cpu_max(&read("cpu.max")?),
        CgroupVersion::V1 => parse_cfs(&read("cpu.cfs_quota_us")?, &read("cpu.cfs_period_us")?),
    }
}

/// The tightest cgroup CPU quota over the process's cgroups and their ancestors, plus loky's fixed
/// root paths (which, when they exist, are the process's own or an ancestor's cgroup).
#[cfg(target_os = "linux")]
fn cgroup_limit() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default();
    let mut dirs = cgroup_dirs(&cgroups, &mounts);
    dirs.push((CgroupVersion::V2, PathBuf::from("/sys/fs/cgroup")));
    dirs.push((CgroupVersion::V1, PathBuf::from("/sys/fs/cgroup/cpu")));
    dirs.iter()
        .filter_map(|(version, dir)| read_limit(*version, dir))
        .min()
}

#[cfg(not(target_os = "linux"))]
fn cgroup_limit() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_lines() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("100000 100000"), Some(1));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("400000 50000"), Some(8));
        assert_eq!(parse_cpu_max("0 100000"), None);
        assert_eq!(parse_cpu_max("100000 0"), None);
        assert_eq!(parse_cpu_max("-1 100000"), None);
        assert_eq!(parse_cpu_max("150000"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("garbage here"), None);
        assert_eq!(parse_cpu_max("1 2 3"), None);
        assert_eq!(
            parse_cpu_max("9223372036854775807 1"),
            usize::try_from(i64::MAX).ok()
        );
    }

    #[test]
    fn cfs_values() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2));
        assert_eq!(parse_cfs("250000", "100000"), Some(3));
        assert_eq!(parse_cfs("100000", "0"), None);
        assert_eq!(parse_cfs("x", "100000"), None);
    }

    #[test]
    fn combine_takes_the_tightest_limit() {
        assert_eq!(combine(&[Some(8), Some(4), None, Some(6)]), 4);
        assert_eq!(combine(&[Some(8), None, None, None]), 8);
        assert_eq!(combine(&[None, None]), 1);
        assert_eq!(combine(&[]), 1);
        assert_eq!(combine(&[Some(0), Some(3)]), 3);
        assert_eq!(combine(&[Some(0)]), 1);
    }

    #[test]
    fn env_cap_parsing() {
        assert_eq!(parse_env_cap("1"), Some(1));
        assert_eq!(parse_env_cap(" 4\n"), Some(4));
        assert_eq!(parse_env_cap("0"), None);
        assert_eq!(parse_env_cap("-3"), None);
        assert_eq!(parse_env_cap("abc"), None);
        assert_eq!(parse_env_cap("1.5"), None);
        assert_eq!(parse_env_cap(""), None);
        assert_eq!(with_env_cap(8, Some("1")), 1);
        assert_eq!(with_env_cap(8, Some("3")), 3);
        assert_eq!(with_env_cap(2, Some("16")), 2);
        assert_eq!(with_env_cap(8, Some("0")), 8);
        assert_eq!(with_env_cap(8, Some("junk")), 8);
        assert_eq!(with_env_cap(8, None), 8);
    }

    #[test]
    fn proc_cgroup_lines() {
        let hybrid =
            "9:name=systemd:/\n4:memory:/x\n2:cpuacct:/\n1:cpu:/job/7\n0::/user.slice/a.scope\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            vec![
                (CgroupVersion::V1, "/job/7".to_owned()),
                (CgroupVersion::V2, "/user.slice/a.scope".to_owned())
            ]
        );
        let v1 = "3:cpu,cpuacct:/docker/abc\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            vec![(CgroupVersion::V1, "/docker/abc".to_owned())]
        );
        assert_eq!(
            parse_proc_cgroup("0::/a:b\n"),
            vec![(CgroupVersion::V2, "/a:b".to_owned())]
        );
        assert!(parse_proc_cgroup("garbage\n\n").is_empty());
    }

    #[test]
    fn mountinfo_lines() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw
42 31 0:39 /docker/abc /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,cpu,cpuacct
short line
";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts,
            vec![
                Mount {
                    version: CgroupVersion::V1,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/cpu".into()
                },
                Mount {
                    version: CgroupVersion::V2,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/unified".into()
                },
                Mount {
                    version: CgroupVersion::V1,
                    root: "/docker/abc".into(),
                    mount_point: "/sys/fs/cgroup/my dir".into()
                },
            ]
        );
        assert_eq!(unescape_mountinfo("a\\040b\\134c\\9"), "a b\\c\\9");
    }

    #[test]
    fn dirs_walk_from_the_cgroup_up_to_the_mount() {
        let mounts = vec![
            Mount {
                version: CgroupVersion::V2,
                root: "/".into(),
                mount_point: "/sys/fs/cgroup".into(),
            },
            Mount {
                version: CgroupVersion::V1,
                root: "/docker/abc".into(),
                mount_point: "/cg/cpu".into(),
            },
        ];
        let cgroups = vec![
            (CgroupVersion::V2, "/system.slice/job.scope".to_owned()),
            (CgroupVersion::V1, "/docker/abc/inner".to_owned()),
        ];
        let dirs: Vec<(CgroupVersion, String)> = cgroup_dirs(&cgroups, &mounts)
            .into_iter()
            .map(|(v, p)| (v, p.to_string_lossy().trim_end_matches('/').to_owned()))
            .collect();
        assert_eq!(
            dirs,
            vec![
                (
                    CgroupVersion::V2,
                    "/sys/fs/cgroup/system.slice/job.scope".to_owned()
                ),
                (CgroupVersion::V2, "/sys/fs/cgroup/system.slice".to_owned()),
                (CgroupVersion::V2, "/sys/fs/cgroup".to_owned()),
                (CgroupVersion::V1, "/cg/cpu/inner".to_owned()),
                (CgroupVersion::V1, "/cg/cpu".to_owned()),
            ]
        );
        // A cgroup outside the mounted subtree, or one with "..", maps to the mount point only.
        let outside = vec![
            (CgroupVersion::V1, "/other".to_owned()),
            (CgroupVersion::V2, "/../x".to_owned()),
        ];
        let dirs = cgroup_dirs(&outside, &mounts);
        assert_eq!(
            dirs.iter()
                .map(|(_, p)| p.to_string_lossy().trim_end_matches('/').to_owned())
                .collect::<Vec<_>>(),
            vec!["/cg/cpu".to_owned(), "/sys/fs/cgroup".to_owned()]
        );
    }

    #[test]
    fn read_limit_from_a_fake_cgroup_tree() {
        let base = std::env::temp_dir().join(format!("pj-cpu-test-{}", std::process::id()));
        let leaf = base.join("slice/job");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(base.join("slice/cpu.max"), "250000 100000\n").unwrap();
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(leaf.join("cpu.cfs_quota_us"), "150000\n").unwrap();
        std::fs::write(leaf.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let mounts = vec![Mount {
            version: CgroupVersion::V2,
            root: "/".into(),
            mount_point: base.clone(),
        }];
        let dirs = cgroup_dirs(&[(CgroupVersion::V2, "/slice/job".to_owned())], &mounts);
        let limit = dirs.iter().filter_map(|(v, d)| read_limit(*v, d)).min();
        assert_eq!(limit, Some(3), "the parent's quota applies to the child");
        assert_eq!(read_limit(CgroupVersion::V1, &leaf), Some(2));
        assert_eq!(read_limit(CgroupVersion::V2, &base), None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn real_count_is_sane() {
        let n = cpu_count();
        assert!(n >= 1);
        assert!(n <= num_cpus::get(), "{n} > num_cpus {}", num_cpus::get());
        #[cfg(target_os = "linux")]
        assert!(affinity_count().is_some_and(|a| a >= n));
    }

    /// Runs in a child process (see below) to check the real environment path; in the parent run
    /// it has nothing to check.
    #[test]
    fn env_cap_probe() {
        if let Some(expected) = std::env::var_os("PJ_TEST_EXPECT_CPU_COUNT") {
            let expected: usize = expected
                .to_str()
                .and_then(|s| s.parse().ok())
                .expect("a count");
            assert_eq!(cpu_count(), expected);
        }
    }

    /// `PJ_MAX_CPU_COUNT=1` caps the count to 1. Checked in a child process of this test binary, so
    /// that no test changes the environment of the (multi-threaded) test process.
    #[test]
    fn env_cap_applies_to_cpu_count() {
        for (value, expected) in [("1", 1), ("0", *HARDWARE), ("junk", *HARDWARE)] {
            let exe = std::env::current_exe().unwrap();
            let output = std::process::Command::new(exe)
                .args(["--exact", "cpu::tests::env_cap_probe", "--test-threads=1"])
                .env(MAX_CPU_COUNT_ENV, value)
                .env("PJ_TEST_EXPECT_CPU_COUNT", expected.to_string())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "PJ_MAX_CPU_COUNT={value}: {stdout}"
            );
            assert!(
                stdout.contains("1 passed"),
                "the probe did not run: {stdout}"
            );
        }
    }
}
